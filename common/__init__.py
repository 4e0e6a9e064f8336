"""Small rules every area of the pack keeps the same way, written once: which names stay inside a folder
(``paths``), how a file is written so a crash never leaves half of it (``files``), which files are images and how
one is opened (``images``), how a caption is split into tags (``tags``). Nothing here imports ComfyUI."""
