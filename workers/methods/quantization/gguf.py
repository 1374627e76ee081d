"""GGUF output through auto-round's exporter (installed with llm-compressor).

Why auto-round: it bundles llama.cpp's own HF-to-GGUF conversion (tensor names, metadata,
tokenizer, chat template) and packs every llama.cpp type including the k-quants, which gguf-py
alone does not (it quantizes Q8_0 / Q4_x / Q5_x only). With `imatrix` it runs its "OPT-RTN"
mode: one pass over the calibration samples, then each block's scales and mins are searched
under activation-weighted error, the role of llama.cpp's importance matrix. `iters=0`: no
signed-gradient tuning (the `autoround` method is that; its artifact is compressed-tensors).

The converter reads config and tokenizer from a directory, so the stage saves the current model
there first (the stage may follow pruning or distillation: it converts what they left).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from app.jobs.state import ErrorCode
from app.recipes import GgufParams
from workers.errors import JobFailure
from workers.evaluation.measure import nonzero_parameter_count, parameter_count
from workers.formats import gguf as gguf_format
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.shared.calibration import calibration_notes, require_calibration
from workers.models.hf import hf_config, pretrained

# auto-round logs one warning per layer that falls back from a k-quant; the report lists the
# types as written instead.
QUIET_LOGGERS = ("autoround", "auto_round", "hf-to-gguf")


class Gguf(CompressionMethod[GgufParams]):
    name = "gguf"
    params_type = GgufParams

    def preflight(self, model: torch.nn.Module, params: GgufParams) -> list[str]:
        architecture = (getattr(hf_config(model), "architectures", None) or ["?"])[0]
        from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

        context = get_conversion(hparams=hf_config(model).to_dict(), auto_update=False)
        if not context.is_supported(architecture):
            raise JobFailure(
                ErrorCode.UNSUPPORTED,
                f"gguf: llama.cpp's converter has no GGUF mapping for {architecture}",
            )
        return []

    def apply(self, stage: StageInput, params: GgufParams) -> StageResult:
        from auto_round import AutoRound

        scratch = stage.scratch or Path(tempfile.mkdtemp(prefix="squash-gguf-"))
        source_dir = scratch / f"gguf-source-{stage.index}"
        out_dir = scratch / f"gguf-out-{stage.index}"
        lm = pretrained(stage.model)
        # Config and tokenizer only: the converter takes the tensors from the model in memory.
        lm.config.save_pretrained(str(source_dir))
        if stage.tokenizer is not None:
            stage.tokenizer.save_pretrained(str(source_dir))
        lm.config._name_or_path = str(source_dir)  # where the converter reads config/tokenizer
        # Counted now: the exporter frees each layer's weights once it has packed them.
        notes: dict[str, Any] = {
            "type": params.type,
            "imatrix": params.searches_scales,
            "parameters": parameter_count(stage.model),
            "nonzero_parameters": nonzero_parameter_count(stage.model),
        }
        options: dict[str, Any] = {"iters": 0, "disable_opt_rtn": not params.searches_scales}
        device = next(stage.model.parameters()).device
        if params.searches_scales:
            samples = require_calibration(self.name, stage)
            length = min(len(s) for s in samples)
            options.update(
                dataset=[torch.tensor([s[:length]], device=device) for s in samples],
                nsamples=len(samples),
                seqlen=length,
                batch_size=1,
            )
            notes.update(calibration_notes(samples))
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        compressor = AutoRound(
            lm,
            tokenizer=stage.tokenizer,
            scheme=f"GGUF:{params.type}",
            device_map="cuda" if device.type == "cuda" else "cpu",
            **options,
        )
        try:
            compressor.quantize_and_save(str(out_dir), format=f"gguf:{params.type.lower()}")
        except NotImplementedError as exc:  # the converter's word for "no mapping for this"
            raise JobFailure(
                ErrorCode.UNSUPPORTED, f"llama.cpp's GGUF converter cannot convert it: {exc}"
            ) from exc
        written = sorted(out_dir.rglob("*.gguf"))
        if len(written) != 1:
            raise JobFailure(
                ErrorCode.INTERNAL_ERROR, f"the GGUF exporter wrote {len(written)} files, not one"
            )
        notes["tensor_types"] = gguf_format.storage(written[0])["tensor_types"]
        return StageResult(
            model=stage.model,
            save_format=gguf_format.FORMAT,
            notes=notes,
            layout=gguf_format.FORMAT,
            written=written[0],
        )
