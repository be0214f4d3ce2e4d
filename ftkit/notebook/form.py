"""`ftkit.panel()`: a form that builds a run config. Defaults and tooltips come from RunConfig's schema."""
from __future__ import annotations

import functools
import html
import json

import yaml

from ftkit.config import RunConfig
from ftkit.notebook import need

METHODS = {"LoRA": ("lora", None), "QLoRA (4-bit)": ("lora", 4), "full": ("full", None), "freeze": ("freeze", None)}
PRECISIONS = {"fp32": {}, "bf16": {"bf16": True}, "fp16": {"fp16": True}}
ALWAYS = ("model_name_or_path", "dataset", "template", "finetuning_type")  # shown even at their defaults


def _guarded(method):
    """A button handler's error shows in the form instead of vanishing into the kernel log."""
    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            method(self, *args)
        except Exception as e:  # noqa: BLE001 - any failure is shown to the person who clicked
            self.message.value = f"<pre style='color:#b00'>{html.escape(str(e))}</pre>"
    return wrapper


def tooltip(cls, text: str) -> dict:
    """The keyword a widget class takes its tooltip by: `tooltip` (ipywidgets 8), or `description_tooltip` (7,
    which Colab ships)."""
    return {"tooltip" if "tooltip" in cls.class_trait_names() else "description_tooltip": text}


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """(name, content) of each file a FileUpload holds: ipywidgets 8 gives a tuple of {name, content, ...}; 7
    (Colab's) a dict name -> {metadata, content}."""
    if isinstance(value, dict):
        return [(name, bytes(f["content"])) for name, f in value.items()]
    return [(f["name"], bytes(f["content"])) for f in value]


class ConfigForm:
    """Widgets for the common keys; `yaml()` / `config()` read them, `set_config()` writes them."""

    def __init__(self, **values):
        w = need("ipywidgets")
        from ftkit.data import bundled_data_dir
        from ftkit.templates import TEMPLATES

        fields, self.defaults = RunConfig.fields(), RunConfig()
        tip = lambda key: fields[key].metadata["help"]  # noqa: E731
        style, layout = {"description_width": "150px"}, w.Layout(width="460px")

        def box(cls, key, **kw):
            return cls(description=key, **tooltip(cls, tip(key)), style=style, layout=layout, **kw)

        known = sorted(json.loads((bundled_data_dir() / "dataset_info.json").read_text("utf-8")))
        d = self.defaults
        self.widgets = {
            "model_name_or_path": box(w.Text, "model_name_or_path", value=d.model_name_or_path),
            "dataset": box(w.Combobox, "dataset", value="", options=known, ensure_option=False,
                           placeholder="a name from dataset_info.json, or a file path"),
            "template": box(w.Dropdown, "template", options=["auto", *TEMPLATES], value=d.template),
            "method": w.Dropdown(description="method", options=list(METHODS), value="LoRA", style=style, layout=layout,
                                 **tooltip(w.Dropdown, tip("finetuning_type") + " QLoRA: " + tip("quantization_bit"))),
            "lora_rank": box(w.BoundedIntText, "lora_rank", value=d.lora_rank, min=1, max=4096),
            "lora_alpha": box(w.Text, "lora_alpha", value="", placeholder="default: 2 x lora_rank"),
            "lora_target": box(w.Text, "lora_target", value=str(d.lora_target)),
            "learning_rate": box(w.FloatText, "learning_rate", value=d.learning_rate),
            "per_device_train_batch_size": box(w.BoundedIntText, "per_device_train_batch_size",
                                               value=d.per_device_train_batch_size, min=1, max=4096),
            "gradient_accumulation_steps": box(w.BoundedIntText, "gradient_accumulation_steps",
                                               value=d.gradient_accumulation_steps, min=1, max=4096),
            "num_train_epochs": box(w.FloatText, "num_train_epochs", value=d.num_train_epochs),
            "max_steps": box(w.IntText, "max_steps", value=d.max_steps),
            "cutoff_len": box(w.BoundedIntText, "cutoff_len", value=d.cutoff_len, min=1, max=10**6),
            "precision": w.Dropdown(description="precision", options=list(PRECISIONS), value="fp32", style=style,
                                    layout=layout,
                                    **tooltip(w.Dropdown, f"fp32 | bf16: {tip('bf16')} | fp16: {tip('fp16')}")),
            "output_dir": box(w.Text, "output_dir", value="", placeholder=tip("output_dir")),
        }
        self.upload = w.FileUpload(accept=".json,.jsonl,.csv,.parquet", description="upload data",
                                   **tooltip(w.FileUpload, "pick a data file on your computer: it is saved in data/ "
                                                           "and used"))
        self.upload.observe(self._uploaded, names="value")
        self.yaml_view = w.HTML()
        self.message = w.HTML()
        buttons = [w.Button(description="Validate", icon="check", tooltip="check config and data (no weights)"),
                   w.Button(description="New %%finetune cell", icon="plus", tooltip="insert this config as a cell"),
                   w.Button(description="Run", icon="play", button_style="success",
                            tooltip="train in a child process with the live panel below")]
        for b, handler in zip(buttons, (self.validate, self.to_cell, self.run)):
            b.on_click(handler)
        self.output = w.Output()
        for widget in self.widgets.values():
            widget.observe(lambda _: self._refresh(), names="value")
        fields_box = w.VBox([*list(self.widgets.values())[:2], self.upload, *list(self.widgets.values())[2:]])
        self.widget = w.VBox([w.HBox([fields_box, self.yaml_view]), w.HBox(buttons),
                              self.message, self.output])
        self.run_object = None
        if values:
            self.set_config(RunConfig.from_dict({"dataset": "demo", **values}))
        self._refresh()

    def values(self) -> dict:
        """The flat config the form describes: keys away from their defaults, plus the ones always shown."""
        v = {k: w.value for k, w in self.widgets.items() if k not in ("method", "precision")}
        v["finetuning_type"], v["quantization_bit"] = METHODS[self.widgets["method"].value]
        v.update(PRECISIONS[self.widgets["precision"].value])
        v["lora_alpha"] = int(v["lora_alpha"]) if str(v["lora_alpha"]).strip() else None
        v["lora_target"] = v["lora_target"] if "," not in v["lora_target"] else \
            [t.strip() for t in v["lora_target"].split(",") if t.strip()]
        v["dataset"] = v["dataset"] or None
        v["output_dir"] = v["output_dir"] or None
        return {k: x for k, x in v.items() if k in ALWAYS or x != getattr(self.defaults, k, None)}

    def yaml(self) -> str:
        return yaml.safe_dump(self.values(), sort_keys=False, allow_unicode=True)

    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.values())

    def set_config(self, cfg: RunConfig) -> None:
        for key, widget in self.widgets.items():
            if key in ("method", "precision"):
                continue
            value = getattr(cfg, key)
            if key == "lora_target" and isinstance(value, list):
                value = ",".join(value)
            widget.value = "" if value is None else str(value) if key in ("lora_alpha", "lora_target") else value
        self.widgets["method"].value = next(m for m, (t, q) in METHODS.items()
                                            if t == cfg.finetuning_type and q == cfg.quantization_bit)
        self.widgets["precision"].value = "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "fp32"

    @_guarded
    def _uploaded(self, change) -> None:
        from pathlib import Path

        for name, content in uploaded_files(change["new"]):
            path = Path("data") / Path(name).name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
            self.widgets["dataset"].value = str(path)
            self.message.value = f"saved {html.escape(str(path))} ({len(content):,} bytes); Validate checks it"

    def _refresh(self) -> None:
        self.yaml_view.value = (f"<pre style='margin-left:1em;padding:6px;background:#f6f6f6'>%%finetune\n"
                                f"{html.escape(self.yaml())}</pre>")

    @_guarded
    def validate(self, *_) -> None:
        import ftkit
        from ftkit.events import preflight_text

        self.message.value = "checking config and data…"
        self.message.value = f"<pre>{html.escape(preflight_text(ftkit.plan(self.config()).summary()))}</pre>"

    @_guarded
    def to_cell(self, *_) -> None:
        from IPython import get_ipython

        get_ipython().set_next_input("%%finetune\n" + self.yaml(), replace=False)
        self.message.value = "inserted a %%finetune cell with this config below"

    @_guarded
    def run(self, *_) -> None:
        from ftkit.notebook.live import run_with_panel

        cfg = self.config()
        self.message.value = f"training in a child process → {html.escape(str(cfg.run_dir))}"
        with self.output:
            self.run_object = run_with_panel(cfg, "panel", background=True)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return "ftkit.panel() form; its config:\n%%finetune\n" + self.yaml()
