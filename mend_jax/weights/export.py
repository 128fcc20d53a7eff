"""Write a model (e.g. with edits applied) as a transformers-format folder that transformers and mend_jax load."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np


def export_model(model, folder: str | Path) -> Path:
    from safetensors.numpy import save_file
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = model.family.to_hf_state(jax.device_get(model.params), model.config)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    try:
        cfg = model.config.to_hf()
        tok = model.tokenizer
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            val = getattr(tok, key, None) if tok is not None else None
            if val is not None:
                cfg[key] = int(val)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in state.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tok is not None:
            tok.save_pretrained(str(tmp))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
