"""The RAM a merge takes, per byte of the model it merges: what `merging.MERGE_RAM` assumes, measured.

    python bench/merge_memory.py

A 110M-parameter Llama (bench/stages.py's, random weights) gets a LoRA adapter from one training step; then, each
in its own process: importing what a merge imports (the floor), and `ftkit.merge` of that adapter (the base loaded
in f32 on a CPU, merged, checked on a probe batch, saved). Reports the peak RSS of each (sampled every 50 ms), the
merge's peak above the floor per byte of the f32 model, against MERGE_RAM, and writes
bench/results/merge-memory-<date>.json.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work" / "merge"
sys.path.insert(0, str(BENCH))


def main() -> None:
    from data_scale import measured
    from stages import model_folder

    import ftkit
    from ftkit.memory import weight_count
    from ftkit.merging import MERGE_RAM

    model = model_folder()
    run_dir = WORK / "run"
    shutil.rmtree(WORK, ignore_errors=True)
    ftkit.train(dict(model_name_or_path=str(model), dataset="demo", max_steps=1, cutoff_len=64,
                     output_dir=str(run_dir)), console=False)
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    floor = measured([sys.executable, "-c", "import torch, transformers, peft, ftkit.merging"], env, "imports")
    merge = measured([sys.executable, "-c", f"import ftkit; ftkit.merge({str(run_dir)!r}, console=False)"], env,
                     "merge")
    size = weight_count(model) * 4 / 2**20
    per_byte = (merge["peak_rss_mib"] - floor["peak_rss_mib"]) / size
    line = (f"merge of a LoRA run on a {size:,.0f} MiB (f32) model: peak {merge['peak_rss_mib']:,.0f} MiB, "
            f"{merge['peak_rss_mib'] - floor['peak_rss_mib']:,.0f} MiB above the {floor['peak_rss_mib']:,.0f} MiB "
            f"import floor = {per_byte:.2f}x the model (merging.MERGE_RAM assumes {MERGE_RAM}x), "
            f"{merge['wall_s']:.1f} s")
    print(line)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    path = BENCH / "results" / f"merge-memory-{stamp}.json"
    path.write_text(json.dumps({"model_mib_f32": size, "imports": floor, "merge": merge, "per_byte": per_byte,
                                "assumed": MERGE_RAM, "summary": line}, indent=1) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
