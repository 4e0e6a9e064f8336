"""The specs of the shipped example workflows: one function per workflow (nodes, links, groups, columns), the parts
they share (Builder, prompt, sampler, score and rank blocks) and the model files their notes name. The Kolors add-on
workflows (7-10) are in workflow_specs_kolors.py; scripts/build_workflows.py turns the specs into files.

It is long because each workflow is spelled out node by node, as a user sees it; the functions are specs, not logic.
"""

from __future__ import annotations


from devkit.workflow_builder import Group, Node, WorkflowSpec

PREDICTOR = "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"
SD15 = "v1-5-pruned-emaonly.safetensors"
KOLORS = "Kolors"  # AestheteKolorsLoader's default: models/kolors/Kolors, downloaded on first use
DIFFSYNTH_LORA = "diffsynth_kolors_lora.ckpt"
DIFFSYNTH_RUN = "kolors_run/checkpoints"  # DiffSynth-Studio's checkpoints/ folder of one training run
SEED = 20241125
# the recipe's own prompt, written through the Prompt Composer's fields in the recipe's order; joined with "，"
# (the composer's choice for Chinese) it is exactly 二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景
RECIPE_FIELDS = {"style": "二次元", "character": "genshin，genshin impact，ganyu，蓝发少女", "scene": "白色背景"}
KOLORS_CFG = 5.0  # KolorsPipeline's default guidance

# output ids in declaration order, where the frontend shows only the type (for links by name)
OUTPUT_IDS = {
    "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"],
    "AestheteKolorsLoader": ["MODEL", "CLIP", "VAE"],
    "AesthetePromptComposer": ["prompt", "fields", "token_report"],
    "AestheteNegativePrompt": ["negative"],
    "AestheteScore": ["scores", "mean", "summary", "table"],
    "AestheteRank": ["kept_images", "kept_scores", "kept_indices", "rejected", "kept_count", "kept_table"],
    "AestheteScoreFolder": ["mean", "count", "table", "skipped"],
    "AestheteLoraLoader": ["MODEL", "CLIP", "report"],
    "AestheteLoraDataset": ["dataset", "report"],
    "AestheteTrainLora": ["model", "lora", "loss", "validation_grid", "score_graph", "report"],
    "AestheteValidationSettings": ["validation"],
    "AestheteSaveLora": ["lora_name"],
    "AestheteLoraSweep": ["MODEL", "CLIP", "best_lora", "grid", "graph", "report"],
}

COLORS = {"models": "#3f789e", "prompt": "#8A8", "generate": "#b58b2a", "score": "#a1309b", "save": "#88A",
          "train": "#b06634", "compare": "#3f8f7f"}

PREDICTOR_FILES = (
    f"• models/aesthetic/{PREDICTOR}/ : config.json, preprocessor_config.json, model.safetensors\n"
    f"  from https://huggingface.co/shunk031/{PREDICTOR}\n"
    f"  or https://modelscope.cn/models/AI-ModelScope/{PREDICTOR}\n"
    "  (downloaded there on the first run when ComfyUI is online)\n"
    f"  美学评分模型放在 models/aesthetic/{PREDICTOR}/（联网时首次运行自动下载）")

ALIGNMENT = "clipscore-vit-l-14"  # the prompt-aware scorer the judge adds (catalog id)
ALIGNMENT_FILES = (
    "• models/QualityMetric/clip-vit-large-patch14/ : config.json, model.safetensors, preprocessor_config.json and "
    "the tokenizer files, from ModelScope DiffSynth-Studio/QualityMetric_reward_pretrained or "
    "https://huggingface.co/openai/clip-vit-large-patch14 (downloaded there on the first run when ComfyUI is online)\n"
    "  提示词一致性评分 CLIPScore 放在 models/QualityMetric/clip-vit-large-patch14/（联网时首次运行自动下载）")


def judge_nodes(b: Builder) -> None:
    """The LAION head ("predictor") and CLIPScore combined, equal weights: looks and prompt alignment."""
    b.add("alignment", "AestheteScorerLoader", {"scorer": ALIGNMENT}, title="Prompt alignment · 提示词一致性")
    b.add("judge", "AestheteJudge", {"weight_1": 1.0, "weight_2": 1.0}, title="Judge: looks + prompt · 综合评分")
    b.link("predictor", 0, "judge", "scorer_1")
    b.link("alignment", 0, "judge", "scorer_2")


KOLORS_FILES = (
    f"• models/kolors/{KOLORS}/ : the Kwai-Kolors/Kolors repository's unet/, vae/, scheduler/ and text_encoder/ "
    "(ChatGLM3 with its tokenizer files), as ModelScope, Hugging Face or DiffSynth-Studio leave it; downloaded "
    "there on the first run when ComfyUI is online (about 18 GB). A Kolors-diffusers folder in models/diffusers "
    "works too: pick it in the Kolors Loader\n"
    f"  Kolors 模型放在 models/kolors/{KOLORS}/（unet、vae、scheduler、text_encoder；联网时首次运行自动下载）")


class Builder:
    """Collects nodes and links for one WorkflowSpec; links name outputs by id (OUTPUT_IDS) or by the frontend's name."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[Node] = []
        self.types: dict[str, str] = {}
        self.links: list[tuple] = []

    def add(self, key: str, type_: str, widgets: dict | None = None, title: str | None = None,
            size: tuple[int, int] | None = None) -> str:
        self.nodes.append(Node(key, type_, widgets=widgets or {}, title=title, size=size))
        self.types[key] = type_
        return key

    def link(self, src: str, output: str, dst: str, input_name: str) -> None:
        ids = OUTPUT_IDS.get(self.types[src])
        slot = ids.index(output) if ids and output in ids else output
        self.links.append((src, slot, dst, input_name))

    def spec(self, columns: list[list], groups: list[Group]) -> WorkflowSpec:
        return WorkflowSpec(self.name, self.nodes, self.links, groups, columns)


def note(b: Builder, heading: str, text: str) -> str:
    """The note every workflow opens with: its heading, then the files to put in place (``text`` starts with them)."""
    return b.add("note", "Note", {"text": f"{heading}\n\nPut these files in place, then press R (refresh) and Queue:\n"
                                          f"{text}"}, title="Models · 模型", size=(520, 360))


EXAMPLE_FIELDS = {"style": "masterpiece, best quality, watercolor", "character": "a red fox", "view_angle": "from side",
                  "shot": "full body", "pose": "sitting", "scene": "snowy birch forest", "time": "dusk",
                  "weather": "light snow", "objects": "lanterns"}


def prompt_nodes(b: Builder, clip_src: tuple[str, str], fields: dict | None = None,
                 negative: str = "recipe-en") -> None:
    """Composer (recipe order) and negative preset, each into a CLIPTextEncode."""
    b.add("composer", "AesthetePromptComposer", dict(fields or EXAMPLE_FIELDS))
    b.add("negative", "AestheteNegativePrompt", {"preset": negative})
    b.add("positive_text", "CLIPTextEncode", title="Positive")
    b.add("negative_text", "CLIPTextEncode", title="Negative")
    b.link(*clip_src, "composer", "clip")  # shows the token count
    b.link(*clip_src, "positive_text", "clip")
    b.link(*clip_src, "negative_text", "clip")
    b.link("composer", "prompt", "positive_text", "text")
    b.link("negative", "negative", "negative_text", "text")


def sampler(b: Builder, key: str, model_src: tuple[str, str], latent: str | tuple[str, int], title: str | None = None,
            cfg: float = 7.0, positive: tuple[str, int] = ("positive_text", 0),
            negative: tuple[str, int] = ("negative_text", 0)) -> str:
    """A KSampler (the workflows' seed, 25 steps of dpmpp_2m karras) on the given model, conditioning and latent."""
    b.add(key, "KSampler", {"seed": SEED, "control_after_generate": "fixed", "steps": 25, "cfg": cfg,
                            "sampler_name": "dpmpp_2m", "scheduler": "karras"}, title=title)
    b.link(*model_src, key, "model")
    b.link(*positive, key, "positive")
    b.link(*negative, key, "negative")
    b.link(*((latent, 0) if isinstance(latent, str) else latent), key, "latent_image")
    return key


def decode_and_score(b: Builder, sampler_key: str, decode: str = "decode", score: str = "score",
                     title: str | None = None, vae_src: tuple[str, str] = ("checkpoint", "VAE"),
                     scorer: str = "predictor") -> None:
    """VAEDecode of a sampler's latent (the checkpoint's VAE), scored by ``scorer`` (the predictor node, or the judge:
    then the composer's prompt goes in too)."""
    b.add(decode, "VAEDecode")
    b.link(sampler_key, 0, decode, "samples")
    b.link(*vae_src, decode, "vae")
    b.add(score, "AestheteScore", title=title)
    b.link(scorer, 0, score, "predictor")
    b.link(decode, 0, score, "images")
    if scorer == "judge":
        b.link("composer", "prompt", score, "prompt")


def rank_and_keep(b: Builder, top_k: int, prefix: str, previews_title: str, best_title: str,
                  table: bool = False) -> None:
    """Rank the scored batch ("decode", "score"), preview all of it with the scores drawn, save the best ``top_k``
    with the score in the file name and metadata (``<prefix>all`` / ``<prefix>best``); ``table``: a judge's every
    scorer goes into the saved files' metadata too."""
    b.add("rank", "AestheteRank", {"top_k": top_k, "min_score": 0.0})
    b.link("decode", 0, "rank", "images")
    b.link("score", "scores", "rank", "scores")
    if table:
        b.link("score", "table", "rank", "table")
    b.add("previews", "AestheteSaveScored", {"mode": "preview", "draw_score": True,
                                              "filename_prefix": f"{prefix}all"}, title=previews_title)
    b.link("decode", 0, "previews", "images")
    b.link("score", "scores", "previews", "scores")
    b.add("save_best", "AestheteSaveScored", {"mode": "save", "draw_score": True, "filename_prefix": f"{prefix}best",
                                               "score_in_filename": True, "score_in_metadata": True,
                                               "model_name": PREDICTOR}, title=best_title)
    b.link("rank", "kept_images", "save_best", "images")
    b.link("rank", "kept_scores", "save_best", "scores")
    if table:
        b.link("rank", "kept_table", "save_best", "table")


def generate_rank_layout(b: Builder, model: str, models_title: str, prompt_title: str,
                         generate_title: str) -> WorkflowSpec:
    """Groups and columns of a generate -> score -> rank -> keep workflow (workflows 1 and 5; with a judge in 1)."""
    judged = "judge" in b.types
    scorers = ["predictor", "alignment", "judge"] if judged else ["predictor"]
    groups = [
        Group(models_title, [model, *scorers], COLORS["models"]),
        Group(prompt_title, ["composer", "negative"], COLORS["prompt"]),
        Group(generate_title, ["positive_text", "negative_text", "latent", "sampler", "decode"], COLORS["generate"]),
        Group("Score, rank · 评分排序", ["score", "rank"], COLORS["score"]),
        Group("Keep the best · 保存最佳", ["previews", "save_best"], COLORS["save"]),
    ]
    columns = [["note", 120, model, *scorers], ["composer", "negative"],
               ["positive_text", "negative_text", "latent"], ["sampler", "decode"], ["score", "rank"],
               ["previews", "save_best"]]
    return b.spec(columns, groups)


def generate_score_rank() -> WorkflowSpec:
    b = Builder("1-generate-score-rank")
    note(b, "Aesthete 1 · Generate, score, rank (生成、评分、排序)", (
        f"• models/checkpoints/{SD15} : Stable Diffusion 1.5 (any SD1.5 checkpoint; for an SDXL one set the "
        "latent to 1024×1024)\n"
        f"{PREDICTOR_FILES}\n"
        f"{ALIGNMENT_FILES}\n\n"
        "8 images from one prompt are scored by a judge: the LAION aesthetic head (looks, 1-10) and CLIPScore (how "
        "well each image matches the composer's prompt), equal weights, combined on the 1-10 scale; then ranked. "
        "The best 3 go to output/Aesthete/best_*_<score>_.png with the combined score in the file name and the PNG "
        "metadata (aesthetic_score; each scorer's in aesthetic_scores). Every image is previewed with its score "
        "drawn on it; the score node's table shows each scorer's column.\n"
        "一个提示词生成 8 张图，由综合评分打分：LAION 美学分（1-10）与 CLIPScore（图与提示词是否一致）等权合成到 "
        "1-10 的尺度，然后排序；最好的 3 张连同分数保存（每个评分器的分数写入 PNG 元数据），所有图的预览都标出分数。"))
    b.add("checkpoint", "CheckpointLoaderSimple", {"ckpt_name": SD15})
    b.add("predictor", "AesthetePredictorLoader", {"model": PREDICTOR})
    judge_nodes(b)
    prompt_nodes(b, ("checkpoint", "CLIP"))
    b.add("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 8}, title="Batch of 8")
    sampler(b, "sampler", ("checkpoint", "MODEL"), "latent")
    decode_and_score(b, "sampler", scorer="judge")
    rank_and_keep(b, top_k=3, prefix="Aesthete/", previews_title="All 8, with scores",
                  best_title="Best 3, saved with scores", table=True)
    return generate_rank_layout(b, "checkpoint", "Models · 模型", "Prompt · 提示词", "Generate 8 · 生成")


def score_a_folder() -> WorkflowSpec:
    b = Builder("2-score-a-folder")
    note(b, "Aesthete 2 · Score a folder (给文件夹打分)", (
        f"{PREDICTOR_FILES}\n"
        "• input/lora_dataset/ : the images to check (a folder under ComfyUI's input directory; change 'folder')\n\n"
        "Gives the mean score of the folder, one line per image (score, file) and the files that were skipped "
        "with the reason. A mean of 6 or more is the recipe's bar for a training set.\n"
        "计算文件夹的平均美学分：逐个文件的分数表、被跳过的文件及原因。训练集平均分应达到 6。"))
    b.add("predictor", "AesthetePredictorLoader", {"model": PREDICTOR})
    # "?threshold": set only once the node has that input (asked of the scoring nodes: the mean against the bar)
    b.add("score_folder", "AestheteScoreFolder", {"folder": "lora_dataset", "recursive": False, "?threshold": 6.0})
    b.link("predictor", 0, "score_folder", "predictor")
    b.add("mean", "PreviewAny", title="Mean score (bar: 6) · 平均分（标准 6）")
    b.add("count", "PreviewAny", title="Images scored · 已评分数")
    b.add("table", "PreviewAny", title="Per-file scores · 逐个文件", size=(420, 260))
    b.add("skipped", "PreviewAny", title="Skipped files · 跳过的文件", size=(420, 200))
    for output in ("mean", "count", "table", "skipped"):
        b.link("score_folder", output, output, "source")
    groups = [
        Group("Predictor · 模型", ["predictor"], COLORS["models"]),
        Group("Score · 评分", ["score_folder"], COLORS["score"]),
        Group("Mean vs 6 · 平均分", ["mean", "count"], COLORS["compare"]),
        Group("Per file · 逐个文件", ["table", "skipped"], COLORS["save"]),
    ]
    columns = [["note", 120, "predictor"], ["score_folder"], ["mean", "count"], ["table", "skipped"]]
    return b.spec(columns, groups)


def train_then_compare() -> WorkflowSpec:
    b = Builder("3-train-then-compare")
    note(b, "Aesthete 3 · Train, then compare (训练后对比)", (
        f"• models/checkpoints/{SD15} : Stable Diffusion 1.5 (the model the LoRA is trained on)\n"
        f"{PREDICTOR_FILES}\n"
        "• input/lora_dataset/ : training images with captions (name.png + name.txt)\n\n"
        "Images scoring under 6 are left out of the training set. Training uses the recipe's defaults (5 epochs, "
        "rank 16, alpha 4); the LoRA is saved to models/loras/aesthete/my_style_00001.safetensors. The same prompt "
        "and seed are then generated without and with the LoRA, both batches are scored, and the two mean scores "
        "are shown side by side.\n"
        "低于 6 分的图片不参与训练；按配方默认值（5 轮、rank 16、alpha 4）训练并保存 LoRA；同一提示词和种子分别"
        "不加 / 加 LoRA 生成，两组都打分，平均分并排显示。"))
    b.add("checkpoint", "CheckpointLoaderSimple", {"ckpt_name": SD15})
    b.add("predictor", "AesthetePredictorLoader", {"model": PREDICTOR})
    b.add("dataset", "AestheteLoraDataset", {"folder": "lora_dataset", "resolution": 512, "min_score": 6.0,
                                             "seed": 0, "control_after_generate": "fixed"},
          title="Dataset, score ≥ 6 · 数据集")
    b.link("predictor", 0, "dataset", "aesthetic_model")
    b.add("train", "AestheteTrainLora", {"epochs": 5, "alpha": 4.0, "seed": 0, "control_after_generate": "fixed"})
    for output, input_name in (("MODEL", "model"), ("CLIP", "clip"), ("VAE", "vae")):
        b.link("checkpoint", output, "train", input_name)
    b.link("dataset", "dataset", "train", "dataset")
    b.add("save_lora", "AestheteSaveLora", {"name_prefix": "aesthete/my_style"})
    b.link("train", "lora", "save_lora", "lora")
    b.add("loss_graph", "AestheteLossGraph")
    b.link("train", "loss", "loss_graph", "loss")
    prompt_nodes(b, ("checkpoint", "CLIP"))
    b.add("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 4}, title="Batch of 4")
    sampler(b, "sampler_base", ("checkpoint", "MODEL"), "latent", title="KSampler · without LoRA")
    sampler(b, "sampler_lora", ("train", "model"), "latent", title="KSampler · with LoRA")
    for side, label in (("base", "without LoRA · 不加"), ("lora", "with LoRA · 加 LoRA")):
        decode_and_score(b, f"sampler_{side}", f"decode_{side}", f"score_{side}", title=f"Score {label}")
        b.add(f"preview_{side}", "AestheteSaveScored", {"mode": "preview", "draw_score": True},
              title=f"Images {label}")
        b.link(f"decode_{side}", 0, f"preview_{side}", "images")
        b.link(f"score_{side}", "scores", f"preview_{side}", "scores")
        b.add(f"mean_{side}", "PreviewAny", title=f"Mean {label}")
        b.link(f"score_{side}", "mean", f"mean_{side}", "source")
    groups = [
        Group("Models · 模型", ["checkpoint", "predictor"], COLORS["models"]),
        Group("Dataset · 数据集", ["dataset"], COLORS["score"]),
        Group("Train · 训练", ["train", "save_lora", "loss_graph"], COLORS["train"]),
        Group("Prompt · 提示词", ["composer", "negative"], COLORS["prompt"]),
        Group("Generate both · 生成", ["positive_text", "negative_text", "latent", "sampler_base",
                                           "sampler_lora", "decode_base", "decode_lora"], COLORS["generate"]),
        Group("Score both · 评分", ["score_base", "score_lora", "preview_base", "preview_lora"], COLORS["score"]),
        Group("Means · 平均分", ["mean_base", "mean_lora"], COLORS["compare"]),
    ]
    columns = [["note", 120, "checkpoint", "predictor"], ["dataset"], ["train", "save_lora", "loss_graph"],
               ["composer", "negative"], ["positive_text", "negative_text", "latent"],
               ["sampler_base", "sampler_lora"], ["decode_base", "decode_lora"],
               ["score_base", "preview_base"], ["score_lora", "preview_lora"], ["mean_base"], ["mean_lora"]]
    return b.spec(columns, groups)


def use_a_diffsynth_lora() -> WorkflowSpec:
    b = Builder("4-use-a-diffsynth-lora")
    note(b, "Aesthete 4 · Use a DiffSynth LoRA on Kolors (在 Kolors 上使用 DiffSynth LoRA)", (
        f"{KOLORS_FILES}\n"
        f"• models/loras/{DIFFSYNTH_LORA} : a Kolors LoRA trained with DiffSynth-Studio 1.x (its Lightning "
        "checkpoint, e.g. lightning_logs/version_0/checkpoints/epoch=4-step=500.ckpt, renamed). DiffSynth stores no "
        "alpha: set the loader's alpha to the lora_alpha you trained with (the recipe: 4). The loader reads .ckpt "
        "files without running pickled code and shows how many tensors it placed. An SDXL LoRA from DiffSynth loads "
        "the same way on an SDXL checkpoint.\n"
        f"{PREDICTOR_FILES}\n"
        f"把 DiffSynth-Studio 1.x 训练的 Kolors LoRA（.ckpt）放进 models/loras，alpha 填训练时的 lora_alpha（配方为 4）。"))
    b.add("kolors", "AestheteKolorsLoader", {"kolors": KOLORS, "dtype": "auto", "text_encoder_device": "default"})
    b.add("lora", "AestheteLoraLoader", {"lora_name": DIFFSYNTH_LORA, "strength_model": 1.0, "strength_clip": 1.0,
                                         "alpha": 4.0})
    b.link("kolors", "MODEL", "lora", "model")
    b.link("kolors", "CLIP", "lora", "clip")
    b.add("predictor", "AesthetePredictorLoader", {"model": PREDICTOR})
    prompt_nodes(b, ("lora", "CLIP"))
    b.add("latent", "EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 4}, title="Batch of 4")
    sampler(b, "sampler", ("lora", "MODEL"), "latent", cfg=KOLORS_CFG)
    decode_and_score(b, "sampler", vae_src=("kolors", "VAE"))
    b.add("save", "AestheteSaveScored", {"mode": "save", "draw_score": True, "filename_prefix": "Aesthete/lora",
                                         "model_name": PREDICTOR}, title="Saved with scores")
    b.link("decode", 0, "save", "images")
    b.link("score", "scores", "save", "scores")
    groups = [
        Group("Kolors, LoRA · 模型", ["kolors", "lora", "predictor"], COLORS["models"]),
        Group("Prompt · 提示词", ["composer", "negative"], COLORS["prompt"]),
        Group("Generate · 生成", ["positive_text", "negative_text", "latent", "sampler", "decode"],
              COLORS["generate"]),
        Group("Score, save · 评分", ["score", "save"], COLORS["score"]),
    ]
    columns = [["note", 120, "kolors", "lora", "predictor"], ["composer", "negative"],
               ["positive_text", "negative_text", "latent"], ["sampler", "decode"], ["score", "save"]]
    return b.spec(columns, groups)


def kolors_generate_score_rank() -> WorkflowSpec:
    b = Builder("5-kolors-generate-score-rank")
    note(b, "Aesthete 5 · Kolors: generate, score, rank (Kolors 生成、评分、排序)", (
        f"{KOLORS_FILES}\n"
        f"{PREDICTOR_FILES}\n\n"
        "The recipe's own Chinese prompt, written field by field in the Prompt Composer (style, character, scene: "
        "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景), and its Chinese negative list go through "
        "Kolors's ChatGLM3 (256 tokens; the composer shows the count). 4 images are scored 1-10 and ranked; the best "
        "goes to output/Aesthete/kolors_best_*_<score>_.png with the score in the file name and the PNG metadata, "
        "and every image is previewed with its score drawn on it.\n"
        "配方自己的中文提示词按字段写进提示词组合器，配方的中文负面词，经 Kolors 的 ChatGLM3 编码；一次生成 4 张，"
        "逐张打分（1-10）并排序，最好的一张连同分数保存，所有图的预览都标出分数。"))
    b.add("kolors", "AestheteKolorsLoader", {"kolors": KOLORS, "dtype": "auto", "text_encoder_device": "default"})
    b.add("predictor", "AesthetePredictorLoader", {"model": PREDICTOR})
    prompt_nodes(b, ("kolors", "CLIP"), RECIPE_FIELDS, negative="recipe-zh")
    b.add("latent", "EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 4}, title="Batch of 4")
    sampler(b, "sampler", ("kolors", "MODEL"), "latent", cfg=KOLORS_CFG)
    decode_and_score(b, "sampler", vae_src=("kolors", "VAE"))
    rank_and_keep(b, top_k=1, prefix="Aesthete/kolors_", previews_title="All 4, with scores",
                  best_title="Best, saved with its score")
    return generate_rank_layout(b, "kolors", "Kolors · 模型", "Recipe prompt · 配方提示词", "Generate 4 · 生成")


def the_recipe() -> WorkflowSpec:
    b = Builder("6-the-recipe")
    note(b, "Aesthete 6 · The recipe: train a Kolors LoRA, score every epoch, keep the best (配方：训练 Kolors LoRA，"
            "每轮评分，保留最佳)", (
        f"{KOLORS_FILES}\n"
        f"{PREDICTOR_FILES}\n"
        f"{ALIGNMENT_FILES}\n"
        "• input/lora_dataset/ : the pixiv images with their tags as captions (name.png + name.txt, the tags joined "
        "by commas; name.json tag lists work too)\n\n"
        "Images scoring under 6 are left out. Train LoRA uses the recipe's defaults (5 epochs, rank 16, alpha 4; "
        "rank 4 for one character) at 1024 with buckets. After every epoch the recipe's test prompt is generated "
        "with the same seed and scored by the judge (the LAION aesthetic head plus CLIPScore against the test prompt, "
        "so an epoch that draws one pretty style whatever the prompt does not win): the grid and the score-per-epoch "
        "graph (the combination and each scorer) are previewed, every epoch is saved "
        "under models/loras/aesthete/recipe_epochNNNN.safetensors, and the best-scoring epoch is output and saved "
        "to models/loras/aesthete/recipe_best_00001.safetensors. The same prompt and seed are then generated "
        "without and with that LoRA, both batches are scored, and the two mean scores are shown side by side.\n"
        "低于 6 分的图片不参与训练；按配方默认值（5 轮、rank 16、alpha 4）在 Kolors 上训练，每轮用配方的测试提示词和"
        "同一种子生成，由综合评分（美学分加 CLIPScore 提示词一致性，避免只会画一种好看画风的轮次胜出）打分，预览网格和每轮分数曲线；每轮的 LoRA 都保存，得分最高的一轮另存；同一提示词和种子分别"
        "不加 / 加 LoRA 生成，两组都打分，平均分并排显示。"))
    b.add("kolors", "AestheteKolorsLoader", {"kolors": KOLORS, "dtype": "auto", "text_encoder_device": "default"})
    b.add("predictor", "AesthetePredictorLoader", {"model": PREDICTOR})
    b.add("dataset", "AestheteLoraDataset", {"folder": "lora_dataset", "resolution": 1024, "min_score": 6.0,
                                             "seed": 0, "control_after_generate": "fixed"},
          title="Dataset, score ≥ 6 · 数据集")
    b.link("predictor", 0, "dataset", "aesthetic_model")
    b.add("validation", "AestheteValidationSettings", {"seed": SEED, "control_after_generate": "fixed", "steps": 25,
                                                       "width": 1024, "height": 1024, "images_per_prompt": 2,
                                                       "cfg": KOLORS_CFG, "output_lora": "best score"},
          title="Validation: the recipe's test prompt · 验证")
    judge_nodes(b)
    b.link("judge", 0, "validation", "predictor")
    b.add("train", "AestheteTrainLora", {"epochs": 5, "rank": 16, "alpha": 4.0, "seed": 0,
                                         "control_after_generate": "fixed", "checkpoint_name": "aesthete/recipe"})
    for output, input_name in (("MODEL", "model"), ("CLIP", "clip"), ("VAE", "vae")):
        b.link("kolors", output, "train", input_name)
    b.link("dataset", "dataset", "train", "dataset")
    b.link("validation", "validation", "train", "validation")
    b.add("save_lora", "AestheteSaveLora", {"name_prefix": "aesthete/recipe_best"}, title="Save the best LoRA")
    b.link("train", "lora", "save_lora", "lora")
    b.add("score_graph", "PreviewImage", title="Score per epoch · 每轮分数")
    b.link("train", "score_graph", "score_graph", "images")
    b.add("grid", "PreviewImage", title="Validation grid · 验证网格")
    b.link("train", "validation_grid", "grid", "images")
    b.add("report", "PreviewAny", title="Training report · 训练报告", size=(420, 260))
    b.link("train", "report", "report", "source")
    prompt_nodes(b, ("kolors", "CLIP"), RECIPE_FIELDS, negative="recipe-zh")
    b.add("latent", "EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 4}, title="Batch of 4")
    sampler(b, "sampler_base", ("kolors", "MODEL"), "latent", title="KSampler · without LoRA", cfg=KOLORS_CFG)
    sampler(b, "sampler_lora", ("train", "model"), "latent", title="KSampler · with LoRA", cfg=KOLORS_CFG)
    for side, label in (("base", "without LoRA · 不加"), ("lora", "with LoRA · 加 LoRA")):
        decode_and_score(b, f"sampler_{side}", f"decode_{side}", f"score_{side}", title=f"Score {label}",
                         vae_src=("kolors", "VAE"), scorer="judge")
        b.add(f"preview_{side}", "AestheteSaveScored", {"mode": "preview", "draw_score": True},
              title=f"Images {label}")
        b.link(f"decode_{side}", 0, f"preview_{side}", "images")
        b.link(f"score_{side}", "scores", f"preview_{side}", "scores")
        b.add(f"mean_{side}", "PreviewAny", title=f"Mean {label}")
        b.link(f"score_{side}", "mean", f"mean_{side}", "source")
    groups = [
        Group("Kolors · 模型", ["kolors", "predictor", "alignment", "judge"], COLORS["models"]),
        Group("Dataset, validation · 数据集与验证", ["dataset", "validation"], COLORS["score"]),
        Group("Train, keep the best · 训练", ["train", "save_lora"], COLORS["train"]),
        Group("Every epoch · 每轮", ["score_graph", "grid", "report"], COLORS["save"]),
        Group("Recipe prompt · 配方提示词", ["composer", "negative"], COLORS["prompt"]),
        Group("Generate both · 生成", ["positive_text", "negative_text", "latent", "sampler_base",
                                           "sampler_lora", "decode_base", "decode_lora"], COLORS["generate"]),
        Group("Score both · 评分", ["score_base", "score_lora", "preview_base", "preview_lora"], COLORS["score"]),
        Group("Means · 平均分", ["mean_base", "mean_lora"], COLORS["compare"]),
    ]
    columns = [["note", 120, "kolors", "predictor", "alignment", "judge"], ["dataset", "validation"],
               ["train", "save_lora"],
               ["score_graph", "grid", "report"], ["composer", "negative"],
               ["positive_text", "negative_text", "latent"], ["sampler_base", "sampler_lora"],
               ["decode_base", "decode_lora"], ["score_base", "preview_base"], ["score_lora", "preview_lora"],
               ["mean_base"], ["mean_lora"]]
    return b.spec(columns, groups)


def pick_the_best_epoch() -> WorkflowSpec:
    b = Builder("11-pick-the-best-epoch")
    note(b, "Aesthete 11 · Pick the best epoch of a DiffSynth Kolors LoRA (挑出 DiffSynth Kolors LoRA 最好的一轮)", (
        f"{KOLORS_FILES}\n"
        f"• models/loras/{DIFFSYNTH_RUN}/ : the checkpoints/ folder of a DiffSynth-Studio 1.x Kolors LoRA run "
        "(lightning_logs/version_0/checkpoints/epoch=0-step=500.ckpt, epoch=1-step=1000.ckpt, ...), copied as it "
        "is. kohya's name-000001.safetensors files, Train LoRA's epochs or any LoRA files in one subfolder work the "
        "same way; a name pattern such as my_lora-*.safetensors too.\n"
        f"{PREDICTOR_FILES}\n"
        f"{ALIGNMENT_FILES}\n\n"
        "Every epoch's file is applied to the same Kolors model in turn and the recipe's test prompt is generated "
        "from the same seed, then judged by looks (the LAION head) and prompt alignment (CLIPScore) combined, so an "
        "epoch that collapsed into one pleasing style does not win. The grid shows a row per epoch (the base model first) with the scores "
        "drawn on, the graph the mean score per epoch; the table ranks them. The best epoch is applied, generated "
        "again at full size and saved with its score.\n"
        f"把 DiffSynth-Studio 1.x 一次训练的 checkpoints/ 文件夹整个放进 models/loras/{DIFFSYNTH_RUN}/；每一轮的 LoRA "
        "依次应用到同一个 Kolors 模型上，用配方的测试提示词和同一种子生成，由美学分与提示词一致性（CLIPScore）综合评分；网格每轮一行（第一行为不加 LoRA），"
        "曲线为每轮平均分，表格给出排名；得分最高的一轮被应用，再生成一批并连同分数保存。"))
    b.add("kolors", "AestheteKolorsLoader", {"kolors": KOLORS, "dtype": "auto", "text_encoder_device": "default"})
    b.add("predictor", "AesthetePredictorLoader", {"model": PREDICTOR})
    b.add("validation", "AestheteValidationSettings", {"seed": SEED, "control_after_generate": "fixed", "steps": 25,
                                                       "width": 1024, "height": 1024, "images_per_prompt": 2,
                                                       "cfg": KOLORS_CFG, "output_lora": "best score"},
          title="The recipe's test prompt · 测试提示词")
    judge_nodes(b)  # looks and prompt alignment: an epoch that collapsed into one style does not win
    b.link("judge", 0, "validation", "predictor")
    b.add("sweep", "AestheteLoraSweep", {"lora_set": DIFFSYNTH_RUN, "strengths": "1.0", "include_base": True,
                                         "alpha": 4.0}, title="Judge every epoch · 评判每一轮")
    for output, input_name in (("MODEL", "model"), ("CLIP", "clip"), ("VAE", "vae")):
        b.link("kolors", output, "sweep", input_name)
    b.link("validation", "validation", "sweep", "validation")
    b.add("grid", "PreviewImage", title="Every epoch, scored · 每轮网格")
    b.link("sweep", "grid", "grid", "images")
    b.add("graph", "PreviewImage", title="Score per epoch · 每轮分数")
    b.link("sweep", "graph", "graph", "images")
    b.add("report", "PreviewAny", title="Ranking · 排名", size=(420, 260))
    b.link("sweep", "report", "report", "source")
    b.add("best", "PreviewAny", title="Best file · 最佳文件")
    b.link("sweep", "best_lora", "best", "source")
    prompt_nodes(b, ("sweep", "CLIP"), RECIPE_FIELDS, negative="recipe-zh")
    b.add("latent", "EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 4}, title="Batch of 4")
    sampler(b, "sampler", ("sweep", "MODEL"), "latent", title="KSampler · the best epoch", cfg=KOLORS_CFG)
    decode_and_score(b, "sampler", vae_src=("kolors", "VAE"))
    b.add("save", "AestheteSaveScored", {"mode": "save", "draw_score": True, "filename_prefix": "Aesthete/best_epoch",
                                         "model_name": PREDICTOR}, title="Saved with scores")
    b.link("decode", 0, "save", "images")
    b.link("score", "scores", "save", "scores")
    groups = [
        Group("Kolors, judge · 模型与评分", ["kolors", "predictor", "alignment", "judge", "validation"],
              COLORS["models"]),
        Group("Judge the epochs · 评判", ["sweep", "report", "best"], COLORS["train"]),
        Group("Every epoch · 每轮", ["grid", "graph"], COLORS["save"]),
        Group("Recipe prompt · 配方提示词", ["composer", "negative"], COLORS["prompt"]),
        Group("Generate with the best · 用最佳一轮生成", ["positive_text", "negative_text", "latent", "sampler",
                                                   "decode"], COLORS["generate"]),
        Group("Score, save · 评分", ["score", "save"], COLORS["score"]),
    ]
    columns = [["note", 120, "kolors", "predictor", "alignment"], ["judge", "validation"], ["sweep", "best", "report"],
               ["grid", "graph"],
               ["composer", "negative"], ["positive_text", "negative_text", "latent"], ["sampler", "decode"],
               ["score", "save"]]
    return b.spec(columns, groups)
