"""What `neuronforge run` checks before it creates a folder or loads a model.

Order: the output location (never overlapping an input; new, empty, or already a run directory), then,
when a selected stage reads them, the model folder (headers and a meta-device skeleton, no weights), whether the
target Neuron SDK's vLLM can serve its model type (when compile or package runs), its tokenizer, the module names,
and the text (decodes, and is long enough for the windows asked for).
A bad input therefore fails in seconds, with nothing written, instead of after the model load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuronforge.assets.models import EMBEDDED_MODELS, embedded_model_dir
from neuronforge.assets.texts import calibration_samples, evaluation_windows, resolve_splits
from neuronforge.core.devices import resolve_device
from neuronforge.core.outputs import check_apart, check_run_dir, is_run_dir
from neuronforge.core.s3uri import is_s3
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.folders import check_weights, load_tokenizer, validate_hf_folder
from neuronforge.neuron.nxdi.config import build_neuron_config_spec, check_servable
from neuronforge.neuron.planner.instances import neuron_instance
from neuronforge.pipeline.quantize.api import check_block_names_in
from neuronforge.pipeline.run import storage
from neuronforge.pipeline.run.config import RunConfig
from neuronforge.pipeline.run.manifest import MANIFEST_FILE, Manifest

READS_INPUTS = ("model", "quantize", "emulate", "evaluate")


def _given_paths(config: RunConfig) -> dict[str, str | None]:
    model = None if config.model in EMBEDDED_MODELS else config.model
    return {"--model": model, "--text": config.text}


def check_output(config: RunConfig) -> None:
    """The run directory may be used: see `core.outputs.check_run_dir` (and its s3:// twin)."""
    target = config.run_dir()
    if is_s3(target):
        check_apart(target, _given_paths(config))
        storage.check_run_prefix(target)
    else:
        check_run_dir(Path(target), _given_paths(config))


def check_mirror(run_dir: Path, remote: str) -> None:
    """An s3:// run directory mirrored here holds a run manifest, not some other manifest.json."""
    if (run_dir / MANIFEST_FILE).exists() and not is_run_dir(run_dir):
        raise NeuronforgeError(
            f"--out {remote} holds a manifest.json that is not a neuronforge run manifest",
            "choose a new or empty s3:// prefix for --out",
        )


def _finished_before(config: RunConfig, run_dir: Path) -> bool:
    """The local run directory already finished every selected stage with exactly this config: the inputs were
    checked then, and a changed file re-runs its stage, whose own load checks it again. Keeps a no-op re-run fast."""
    if not (run_dir / MANIFEST_FILE).is_file() or not is_run_dir(run_dir):
        return False
    manifest = Manifest.load(run_dir)
    finished = ("done", "skipped")  # compile is skipped off Neuron hosts
    done = all(name in manifest.stages and manifest.stages[name].status in finished for name in config.stages)
    return done and manifest.config == config.model_dump(mode="json")


def check_inputs(config: RunConfig, model: str, text: Path | None) -> None:
    """Model folder, tokenizer, module names and text, for the selected stages that read them."""
    selected = set(config.stages)
    target = config.run_dir()
    if selected & {"quantize", "emulate", "evaluate"} and config.device == "cuda":
        resolve_device("cuda")  # without a usable GPU: refused before the first stage, with torch's reason
    if not selected & set(READS_INPUTS) or (not is_s3(target) and _finished_before(config, Path(target))):
        return
    splits = resolve_splits(text)
    folder = embedded_model_dir(model) if model in EMBEDDED_MODELS else Path(model)
    if model in EMBEDDED_MODELS and not (folder / "config.json").exists():
        return  # fetched and checked by the model stage
    validate_hf_folder(folder)
    if selected & {"compile", "package"}:
        check_servable(folder, config.sdk)
    check_weights(folder)
    tokenizer = load_tokenizer(folder)
    if config.modules_to_not_convert is not None and "quantize" in selected:
        check_block_names_in(config.modules_to_not_convert, folder)
    if selected & {"quantize", "evaluate"}:
        calibration_samples(tokenizer, splits.calibration, config.nsamples, config.calib_seq_len)
    if "emulate" in selected:
        for body in splits.evaluation.values():
            evaluation_windows(tokenizer, body, config.calib_seq_len, config.eval_tokens)
    check_deployment(config, folder)


DEPLOYS = ("compile", "package")  # the stages that build the NeuronConfig (emulate reads only the instance)


def check_deployment(config: RunConfig, folder: Path) -> None:
    """The deployment settings (--tp-degree, --seq-len, --sdk, --instance, --budget-instance; the model family on
    that SDK, its max_position_embeddings) pass neuron-config's own rules before any stage runs: they used to fail
    only at `package`, after quantize and emulate (report D01-D06, X04, X13). Nothing is kept bf16 here (stage 1
    decides that), which needs the least memory: what fails here fails at package too."""
    for instance in (config.budget_instance, config.instance):
        if instance is not None:
            neuron_instance(instance)
    if not set(config.stages) & set(DEPLOYS):
        return
    given: dict[str, Any] = {
        "instance": config.instance,
        "tp_degree": config.tp_degree,
        "seq_len": config.seq_len,
        "sdk": config.sdk,
    }
    build_neuron_config_spec(
        folder,
        dtype=config.dtype,
        kv=config.kv,
        batch_size=config.batch_size,
        **{k: v for k, v in given.items() if v is not None},
    )
