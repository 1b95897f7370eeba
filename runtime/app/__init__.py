"""The web app: `python -m runtime.app` serves a page (Gradio) on 127.0.0.1 to open a clip, click the
object or upload a mask, see the plan, remove the object with progress and Cancel, compare and download.

- workspace.py: the server's folder, one temporary folder per session, upload limits
- jobs.py: device jobs as child processes of the CLIs, one at a time (`DeviceQueue`), tqdm progress
- segmentation.py: the one module that calls `runtime.segment` (instant masks, propagation job)
- session.py: one session's work, independent of the page; `Sessions` holds them all
- drawing.py: masks, clicks and plan boxes drawn on a frame
- ui.py: the page, a thin layer over `Session`
"""
