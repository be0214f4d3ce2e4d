"""%%finetune in a real Jupyter kernel (ipykernel over ZMQ, as JupyterLab drives it; no browser).

The front end's side is played by jupyter_client: it reads the panel's widget messages, clicks the Stop button
by sending the comm message a browser would send, or interrupts the kernel like the ■ button.
"""
import time

import pytest

pytestmark = pytest.mark.slow

CONFIG = """model_name_or_path: tiny
dataset: demo
max_steps: 300
logging_steps: 1
per_device_train_batch_size: 8
cutoff_len: 128
output_dir: {out}
overwrite_output_dir: true
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from jupyter_client.manager import start_new_kernel

    cwd = tmp_path_factory.mktemp("kernel")
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(cwd))
    k = Kernel(km, kc, cwd)
    assert k.run("%load_ext ftkit\nimport os\nos.environ['OMP_NUM_THREADS'] = '1'").error is None
    yield k
    kc.stop_channels()
    km.shutdown_kernel(now=True)


class Result:
    def __init__(self):
        self.steps, self.outputs, self.updates, self.error, self.stop_comm = [], [], [], None, None


class Kernel:
    def __init__(self, km, kc, cwd):
        self.km, self.kc, self.cwd = km, kc, cwd

    def run(self, code: str, on_step=None, timeout: float = 180) -> Result:
        """Execute a cell, collecting its outputs and the panel's step lines; on_step(result) after each."""
        msg_id, r, t = self.kc.execute(code), Result(), time.time()
        while time.time() - t < timeout:
            try:
                m = self.kc.get_iopub_msg(timeout=1)
            except Exception:  # noqa: BLE001 - queue.Empty: keep waiting
                continue
            kind, c = m["msg_type"], m["content"]
            if kind == "comm_open":
                state = c["data"].get("state", {})
                if state.get("_model_name") == "ButtonModel" and state.get("description") == "Stop":
                    r.stop_comm = c["comm_id"]
            elif kind == "comm_msg" and str(c["data"].get("state", {}).get("value", "")).startswith("step "):
                r.steps.append(c["data"]["state"]["value"])
                if on_step:
                    on_step(r)
            elif m["parent_header"].get("msg_id") != msg_id:
                continue
            elif kind in ("stream", "display_data", "execute_result"):
                r.outputs.append(c)
                if c.get("name") == "stderr" and c["text"].startswith("UsageError"):  # IPython's short error
                    r.error = c["text"].strip()
            elif kind == "update_display_data":
                r.updates.append(c["data"])
            elif kind == "error":
                r.error = f"{c['ename']}: {c['evalue']}"
            elif kind == "status" and c["execution_state"] == "idle":
                return r
        raise TimeoutError(code)

    def click(self, comm_id: str) -> None:
        """What a browser sends when the button is clicked."""
        self.kc.shell_channel.send(self.kc.session.msg(
            "comm_msg", {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}))

    def value(self, expr: str) -> str:
        r = self.run(f"print(repr(({expr})))")
        assert r.error is None, r.error
        return "".join(o.get("text", "") for o in r.outputs).strip()


def test_stop_button_ends_a_foreground_run(kernel):
    clicked = []

    def click_at_third_draw(r):
        if len(r.steps) == 3 and not clicked:
            kernel.click(r.stop_comm)
            clicked.append(True)

    r = kernel.run("%%finetune --name a\n" + CONFIG.format(out="out/a"), on_step=click_at_third_draw)
    assert r.error is None and clicked
    assert kernel.value("a.stopped, a.losses[-1][0] < 100, (a.adapter_dir / 'adapter_model.safetensors').exists()") \
        == "(True, True, True)"
    final = r.updates[-1]  # the live panel replaced in place by a static image and a summary
    assert final["image/png"] and "stopped early at step" in final["text/plain"]


def test_interrupt_stops_cleanly_and_the_kernel_lives(kernel):
    interrupted = []

    def interrupt_at_third_draw(r):
        if len(r.steps) == 3 and not interrupted:
            kernel.km.interrupt_kernel()
            interrupted.append(True)

    r = kernel.run("%%finetune --name b\n" + CONFIG.format(out="out/b"), on_step=interrupt_at_third_draw)
    assert r.error is None and interrupted
    assert kernel.value("b.stopped, b.losses[-1][0] < 100, (b.adapter_dir / 'adapter_model.safetensors').exists()") \
        == "(True, True, True)"
    assert kernel.value("1 + 1") == "2"


def test_errors_are_one_line_without_traceback(kernel):
    r = kernel.run("%%finetune\ndataset: demo\nlerning_rate: 1e-4\n")
    assert r.error.startswith("UsageError: invalid run config") and "did you mean learning_rate" in r.error
    r = kernel.run("%%finetune\n" + CONFIG.format(out="out/c").replace("demo", "missing.json"))
    assert r.error.startswith("UsageError: cannot start this run") and "missing.json" in r.error


def test_the_magic_line_takes_notebook_variables(kernel):
    r = kernel.run("NAME = 'c'")
    assert r.error is None
    r = kernel.run("%%finetune --name {NAME}\n" + CONFIG.format(out="out/v").replace("max_steps: 300", "max_steps: 2"))
    assert r.error is None, r.error
    assert kernel.value("c.losses[-1][0]") == "2"


def test_the_kernel_never_imports_torch_for_a_run(kernel):
    """Training happens in the child: a %%finetune cell, passthrough TrainingArguments keys included, leaves the
    kernel without torch (its memory, CUDA context and threads stay the child's)."""
    body = CONFIG.format(out="out/p").replace("max_steps: 300", "max_steps: 2") + "weight_decay: 0.01\noptim: adamw_torch\n"
    r = kernel.run("%%finetune --name p\n" + body)
    assert r.error is None, r.error
    assert kernel.value("p.losses[-1][0], sorted(m for m in ('torch', 'transformers') if m in __import__('sys').modules)") \
        == "(2, [])"
