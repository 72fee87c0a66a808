"""The Gradio page of `fresco ui`: input and result side by side, then the three steps (keyframes, render the
keyframes, propagate) and the grouped settings. Every button calls fresco.ui.jobs; renders go through one queue
slot ("render", one at a time); errors land in the status line as the CLI's one-line messages."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import RenderConfig
from ..prompts import format_extra_prompts
from . import form, guard, jobs

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage pings (read at import)
import gradio as gr  # noqa: E402 -- this module is the Gradio layer; fresco.ui imports it only with Gradio present

CSS = "#status {min-height: 2em} .fresco-error {color: #b00020; font-weight: 600}"


def _status(text: str, error: bool = False) -> str:
    return f'<span class="fresco-error">{text}</span>' if error else text


def download_folder() -> Path:
    """A fresh folder for one download (settings YAML, keyframes zip, score plot) inside Gradio's own upload folder,
    which it serves anyway: the UI writes nowhere else outside its root, and never into the user's output folder."""
    from gradio.utils import get_upload_folder
    os.makedirs(get_upload_folder(), exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="fresco-ui-", dir=get_upload_folder()))


class UI:
    """The page's state and handlers. `make_stylizer` (tests: a stand-in) turns a config and a step callback into
    a BatchStylizer; by default the cached FrescoPipeline. The page serves and writes only under `root` (default
    `out_root`): typed output folders must resolve under it; typed inputs must resolve under it, under Gradio's
    upload folder or under a folder of `inputs` (`fresco ui --inputs DIR`)."""

    def __init__(self, model: Optional[str] = None, out_root: str | Path = "out",
                 make_stylizer: Optional[jobs.StylizerFactory] = None, root: Optional[str | Path] = None,
                 inputs: Sequence[str | Path] = ()):
        self.defaults = RenderConfig(sd_path=model) if model else RenderConfig()
        self.out_root = Path(out_root)
        self.root = guard.ui_root(out_root, root)
        guard.check_under_root(str(self.out_root), self.root)
        self.input_roots = [self.root] + [guard.input_root(d) for d in inputs]
        self._pipeline = jobs.pipeline_stylizer(jobs.PipelineCache())
        self.make_stylizer = make_stylizer or self._pipeline
        self.jobs: dict[str, jobs.Job] = {}
        self.demo = None

    # ---- plain handlers (unit-tested) ----
    def config(self, values: dict[str, Any], keep: dict, source: Optional[str], out_dir: str,
               validate: bool = True) -> RenderConfig:
        """The render config of the page: settings widgets + keyframe controls + input + output folder."""
        values = dict(values)
        if values.pop("fixed_interval", False):
            interval = values.pop("interval")
            values["mininterv"] = values["maxinterv"] = interval
        values.pop("interval", None)
        for k in ("mininterv", "maxinterv"):
            if isinstance(values.get(k), float) and math.isfinite(values[k]) and values[k] == int(values[k]):
                values[k] = int(values[k])
        if source:
            from gradio.utils import get_upload_folder
            guard.check_input(source, [*self.input_roots, Path(get_upload_folder()).resolve()])
        values["file_path"] = source or None
        if out_dir and out_dir.strip():
            values["save_path"] = out_dir.strip()
        elif source:
            values["save_path"] = str(self.out_root / Path(source.rstrip("/")).stem)
        cfg = form.build_config(values, keep, validate=validate)
        if cfg.save_path:
            guard.check_under_root(cfg.save_path, self.root)
        return cfg

    def open_input(self, path: Optional[str], values: dict, keep: dict) -> tuple[Optional[str], str]:
        """(chosen source, its description or the error line)."""
        if not path or not str(path).strip():
            return None, ""
        path = str(path).strip()
        try:
            cfg = self.config(values, keep, path, "", validate=False)
            return path, jobs.describe_input(cfg).text()
        except Exception as e:  # noqa: BLE001
            jobs.log_traceback(e)
            return None, _status(jobs.error_line(e), True)

    def keyframes(self, values: dict, keep: dict, source: Optional[str], out_dir: str):
        """Step 1: (gallery, plan text)."""
        try:
            cfg = self.config(values, keep, source, out_dir, validate=False)
            if not cfg.file_path:
                raise ValueError("file_path: upload a video or give the path of a video file or folder of images")
            form.build_config({"prompt": "x", **cfg.to_dict()}, validate=True)  # every other key checked
            plan = jobs.plan_keyframes(cfg)
            return plan.gallery, plan.text()
        except Exception as e:  # noqa: BLE001
            jobs.log_traceback(e)
            return [], _status(jobs.error_line(e), True)

    def run(self, stage: str, session: str, values: dict, keep: dict, source: Optional[str], out_dir: str):
        """Steps 2 and 3 as a generator of dicts: status text, progress (fraction, description), gallery of the
        finished keys, and at the end of step 3 the outputs."""
        try:
            cfg = self.config(values, keep, source, out_dir)
            guard.preflight(cfg, default_model=self.make_stylizer is self._pipeline)
        except Exception as e:  # noqa: BLE001
            jobs.log_traceback(e)
            yield {"status": _status(jobs.error_line(e), True)}
            return
        job = jobs.Job(cfg, stage, self.make_stylizer)
        self.jobs[session] = job
        try:
            yield {"status": f"{stage}: starting in {cfg.save_path}", "gallery": jobs.finished_keys(cfg.save_path)}
            for ev in job.events():
                d = ev.data
                if ev.kind == "step":
                    desc = f"batch {d['batch']}/{d['n_batches']} · step {d['step']}/{d['n_steps']}"
                    frac = ((d["batch"] - 1) * d["n_steps"] + d["step"]) / (d["n_batches"] * d["n_steps"])
                    yield {"progress": (frac, desc), "status": desc}
                elif ev.kind == "batch":
                    yield {"status": f"batch {d['batch']}/{d['n_batches']} finished",
                           "gallery": jobs.finished_keys(cfg.save_path)}
                elif ev.kind == "frame":
                    if d["done"] == d["total"] or d["done"] % 10 == 0:
                        yield {"progress": (d["done"] / d["total"], f"propagating frame {d['done']}/{d['total']}"),
                               "status": f"propagating frame {d['done']}/{d['total']}"}
                elif ev.kind == "done":
                    res = d["result"]
                    if stage == "keyframes":
                        yield {"status": f"keyframes done: {len(res.keys)} keys in {len(res.batches)} batch(es) "
                                         f"in {res.keys_dir}; step 3 propagates them",
                               "gallery": jobs.finished_keys(cfg.save_path)}
                    else:
                        yield {"status": f"done: {res.n_frames} frames, {res.fps:g} fps, {res.size[0]}x"
                                         f"{res.size[1]} → {res.video}",
                               "gallery": jobs.finished_keys(cfg.save_path),
                               "outputs": jobs.outputs(res, cfg.save_path, download_folder())}
                elif ev.kind == "cancelled":
                    yield {"status": _status(f"fresco: cancelled: {d['message']}", True)}
                else:
                    yield {"status": _status(d["message"], True)}
        finally:
            job.cancel()  # a closed page (generator closed) stops the render too
            if self.jobs.get(session) is job:
                del self.jobs[session]

    def cancel(self, session: str) -> str:
        job = self.jobs.get(session)
        if job is None:
            return "nothing to cancel"
        job.cancel()
        return "cancelling: stopping at the next step…"

    def save_settings(self, values: dict, keep: dict, source: Optional[str], out_dir: str) -> tuple[Optional[str],
                                                                                                      str]:
        """(YAML path to download, status)."""
        try:
            cfg = self.config(values, keep, source, out_dir, validate=False)
            path = download_folder() / "fresco.yaml"
            return str(form.save_settings(cfg, path)), f"settings saved as {path.name}"
        except Exception as e:  # noqa: BLE001
            jobs.log_traceback(e)
            return None, _status(jobs.error_line(e), True)

    def score(self, values: dict, keep: dict, source: Optional[str], out_dir: str) -> tuple[str, Optional[str]]:
        """(the figures of fresco.score for the output folder's render against its input, as Markdown, or the error
        line; the warp-error plot PNG in a temporary folder)."""
        try:
            cfg = self.config(values, keep, source, out_dir)
            video = Path(cfg.save_path) / cfg.output
            if not video.exists():
                raise ValueError(f"score: no render at '{video}' yet; step 3 makes it")
            from ..score import score_config
            plot = download_folder() / "score.png"
            return "\n".join(f"- {line}" for line in score_config(cfg, video, plot=plot).summary()), str(plot)
        except Exception as e:  # noqa: BLE001
            jobs.log_traceback(e)
            return _status(jobs.error_line(e), True), None

    # ---- the page ----
    def build(self) -> gr.Blocks:
        specs = form.settings_fields()
        d = self.defaults
        with gr.Blocks(title="FRESCO", analytics_enabled=False) as demo:
            gr.Markdown("# FRESCO video-to-video\nUpload a video, preview its keyframes, render them, then "
                        "propagate to every frame.")
            source = gr.State(None)
            keep = gr.State({})
            with gr.Row():
                with gr.Column():
                    in_video = gr.Video(label="Input", sources=["upload"], elem_id="input-video")
                    in_path = gr.Textbox(label="…or a video file / image folder on this machine (Enter to open)",
                                         elem_id="input-path")
                    in_info = gr.Markdown(elem_id="input-info")
                    out_dir = gr.Textbox(label=f"Output folder (empty: {self.out_root}/<input name>)",
                                         elem_id="out-dir")
                with gr.Column():
                    result = gr.Video(label="Result", interactive=False, elem_id="result-video")
                    with gr.Row():
                        dl_video = gr.DownloadButton("Video", elem_id="dl-video", interactive=False)
                        dl_keys = gr.DownloadButton("Keyframes (zip)", elem_id="dl-keys", interactive=False)
                        dl_preview = gr.DownloadButton("Preview", elem_id="dl-preview", interactive=False)
                    preview = gr.Image(label="Preview: input keys above, stylised below", interactive=False,
                                       elem_id="preview")
                    with gr.Accordion("Score (temporal consistency, CLIP)", open=False, elem_id="score"):
                        score_btn = gr.Button("Score the result against the input", elem_id="btn-score")
                        score_text = gr.Markdown(elem_id="score-text")
                        score_plot = gr.Image(label="Warp error per frame", interactive=False, elem_id="score-plot")
            status = gr.Markdown(elem_id="status")
            widgets: dict[str, Any] = {}
            with gr.Tab("1. Keyframes", elem_id="tab-keys"):
                with gr.Row():
                    widgets["mininterv"] = gr.Number(d.mininterv, label="s_min (min keyframe gap)", precision=0,
                                                     elem_id="s-min")
                    widgets["maxinterv"] = gr.Number(d.maxinterv, label="s_max (max keyframe gap)", precision=0,
                                                     elem_id="s-max")
                    widgets["fixed_interval"] = gr.Checkbox(False, label="fixed interval", elem_id="fixed")
                    widgets["interval"] = gr.Number(d.mininterv, label="interval", precision=0, elem_id="interval")
                    keys_btn = gr.Button("Select keyframes", elem_id="btn-keys")
                plan_text = gr.Markdown(elem_id="plan")
                plan_gallery = gr.Gallery(label="Keyframes (caption: frame and batch)", columns=8, height=260,
                                          elem_id="plan-gallery")
            with gr.Tab("2. Render keyframes", elem_id="tab-render"):
                with gr.Row():
                    render_btn = gr.Button("Render keyframes", variant="primary", elem_id="btn-render")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="btn-cancel")
                keys_gallery = gr.Gallery(label="Stylised keyframes (fills in as batches finish)", columns=8,
                                          height=260, elem_id="keys-gallery")
            with gr.Tab("3. Propagate", elem_id="tab-propagate"):
                with gr.Row():
                    prop_btn = gr.Button("Propagate to every frame", variant="primary", elem_id="btn-propagate")
                    cancel2_btn = gr.Button("Cancel", variant="stop", elem_id="btn-cancel2")
                gr.Markdown("Runs any keyframe batch still missing, then warps the keyframes to every frame. The "
                            "result plays at the top right.")
            with gr.Accordion("Settings", open=True, elem_id="settings"):
                with gr.Row():
                    load_btn = gr.UploadButton("Load settings (YAML)", file_types=[".yaml", ".yml"],
                                               elem_id="btn-load")
                    save_btn = gr.Button("Save settings (YAML)", elem_id="btn-save")
                    saved = gr.DownloadButton("Download YAML", interactive=False, elem_id="dl-yaml")
                groups: dict[str, list[form.FieldSpec]] = {}
                for s in specs:
                    groups.setdefault(s.group, []).append(s)
                for group, items in groups.items():
                    with gr.Group():
                        gr.Markdown(f"**{group}**")
                        with gr.Row():
                            for s in items:
                                widgets[s.name] = self._widget(s, getattr(d, s.name))

            names = list(widgets)
            comps = [widgets[n] for n in names]

            def split(data: dict) -> tuple[dict, dict, Optional[str], str]:
                """(settings values by name, kept YAML keys, source, output folder) from a set-inputs event."""
                return {n: data[widgets[n]] for n in names}, data[keep], data[source], data[out_dir]

            key_inputs = {*comps, keep, source, out_dir}

            def on_upload(data: dict):
                values, keep_v, _, _ = split(data)
                src, text = self.open_input(data[in_video], values, keep_v)
                return src, text, ""

            in_video.change(on_upload, {in_video, *key_inputs}, [source, in_info, in_path])

            def on_path(data: dict):
                values, keep_v, _, _ = split(data)
                src, text = self.open_input(data[in_path], values, keep_v)
                # a typed path is read by the renderer, never served: the player keeps what it showed
                return (src or None), text, gr.update()
            in_path.submit(on_path, {in_path, *key_inputs}, [source, in_info, in_video])

            def on_describe(data: dict):
                """The input's description again after a change of the processing size settings."""
                values, keep_v, src, _ = split(data)
                if not src and data[in_path]:
                    src = data[in_path]
                return self.open_input(src, values, keep_v)[1] if src else gr.update()
            for n in ("size", "short_side", "fps"):
                if n in widgets:
                    widgets[n].change(on_describe, {in_path, *key_inputs}, in_info)

            def on_keys(data: dict):
                return self.keyframes(*split(data))
            keys_btn.click(on_keys, key_inputs, [plan_gallery, plan_text])
            for n in ("mininterv", "maxinterv", "fixed_interval", "interval", "batch_size"):
                widgets[n].change(on_keys, key_inputs, [plan_gallery, plan_text])

            outs = [status, keys_gallery, result, preview, dl_video, dl_keys, dl_preview]

            def runner(stage):
                def go(data: dict, request: gr.Request, progress=gr.Progress()):
                    session = getattr(request, "session_hash", None) or "local"
                    for upd in self.run(stage, session, *split(data)):
                        if "progress" in upd:
                            progress(upd["progress"][0], desc=upd["progress"][1])
                        o = upd.get("outputs")
                        yield (upd.get("status", gr.update()),
                               upd["gallery"] if "gallery" in upd else gr.update(),
                               o["video"] if o else gr.update(), o["preview"] if o else gr.update(),
                               *(gr.update(value=o[k], interactive=True) if o else gr.update()
                                 for k in ("video", "keys_zip", "preview")))
                return go
            render_btn.click(runner("keyframes"), key_inputs, outs, concurrency_limit=1, concurrency_id="render")
            prop_btn.click(runner("propagate"), key_inputs, outs, concurrency_limit=1, concurrency_id="render")

            def on_score(data: dict):
                return self.score(*split(data))
            score_btn.click(on_score, key_inputs, [score_text, score_plot], concurrency_limit=1,
                            concurrency_id="render")

            def on_cancel(request: gr.Request):
                return self.cancel(getattr(request, "session_hash", None) or "local")
            cancel_btn.click(on_cancel, None, status, queue=False)
            cancel2_btn.click(on_cancel, None, status, queue=False)

            def on_load(file: Any):
                try:
                    cfg = form.load_settings(file if isinstance(file, str) else file.name)
                    vals = form.form_values(cfg)
                except Exception as e:  # noqa: BLE001 - a value that loads but the form cannot show is one line too
                    jobs.log_traceback(e)
                    return (*[gr.update() for _ in names], gr.update(), gr.update(), gr.update(),
                            _status(jobs.error_line(e), True))
                vals.update(mininterv=cfg.mininterv, maxinterv=cfg.maxinterv, fixed_interval=cfg.mininterv ==
                            cfg.maxinterv, interval=cfg.mininterv)
                return (*[vals[n] for n in names], form.hidden_values(cfg), cfg.file_path or gr.update(),
                        cfg.save_path or gr.update(), f"settings loaded from {Path(str(file)).name}")
            load_btn.upload(on_load, load_btn, [*comps, keep, in_path, out_dir, status])

            def on_save(data: dict):
                path, text = self.save_settings(*split(data))
                return (gr.update(value=path, interactive=True) if path else gr.update()), text
            save_btn.click(on_save, key_inputs, [saved, status])
        demo.queue(default_concurrency_limit=4)
        self.demo = demo
        return demo

    def serve(self, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
              block: bool = True, auth: Optional[list[tuple[str, str]]] = None) -> str:
        """Serve the built page on host:port (Gradio's default port when None; a public link only with `share`),
        behind the (user, password) logins `auth` when given; files under the root (and Gradio's own uploads) may
        be served, nothing else. Returns the local URL (when not `block`)."""
        self.out_root.mkdir(parents=True, exist_ok=True)
        self.demo.launch(server_name=host, server_port=port, share=share, css=CSS, ssr_mode=False,
                         allowed_paths=[str(self.root)], prevent_thread_lock=not block, auth=auth,
                         show_error=False, quiet=not block)
        return self.demo.local_url

    @staticmethod
    def _widget(s: form.FieldSpec, value: Any):
        """The Gradio component of one setting (help text shown under it)."""
        eid = "set-" + s.name.replace("_", "-")
        common = dict(label=s.label, elem_id=eid, info=s.help or None)
        if s.kind == "bool":
            return gr.Checkbox(bool(value), **common)
        if s.kind == "choice":
            choices = ([""] if s.optional else []) + list(s.choices)
            return gr.Dropdown(choices, value="" if value is None else value, **common)
        if s.kind in ("int", "float") and not s.optional:
            return gr.Number(value, precision=0 if s.kind == "int" else None, **common)
        if s.kind == "ints" and value is not None:
            value = ", ".join(str(i) for i in value)
        if s.name == "extra_prompts":
            value = format_extra_prompts(value)
        if isinstance(value, list):  # a list knob (LoRAs, embeddings): its items joined by '; '
            value = "; ".join(value)
        return gr.Textbox("" if value is None else str(value), lines=2 if s.name in ("prompt", "negative_prompt")
                          else 1, **common)


def launch(model: Optional[str] = None, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
           out_root: str = "out", block: bool = True, root: Optional[str] = None,
           auth: Optional[list[tuple[str, str]]] = None, inputs: Sequence[str] = ()) -> UI:
    """Build and serve the page (see `UI.serve`; `root`: the folder it serves and writes under, default
    `out_root`; `inputs`: folders whose videos and images may be typed as the input); returns the UI when not
    `block`."""
    ui = UI(model=model, out_root=out_root, root=root, inputs=inputs)
    ui.build()
    ui.serve(host, port, share, block, auth)
    return ui
