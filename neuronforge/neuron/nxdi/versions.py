"""The Neuron SDK releases neuronforge targets, pinned in one place.

Inf2/Trn1 need an NxD Inference build that still supports them; the compile step, the install page
(docs/neuron-stack.md, checked by a test) and the install hint all read these pins so they can never disagree. A
version we could not source is `None` and shown as "unknown" rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuronforge.errors import NeuronforgeError

NEURON_PIP_INDEX = "https://pip.repos.neuron.amazonaws.com"


@dataclass(frozen=True)
class NeuronSdk:
    """One Neuron SDK release and the pip package versions that ship in it."""

    sdk: str
    nxdi: str  # neuronx-distributed-inference
    nxd_core: str | None  # neuronx-distributed
    neuronx_cc: str | None
    torch_neuronx: str | None
    note: str
    sources: tuple[str, ...]

    def pins(self) -> dict[str, str | None]:
        """pip package name -> pinned version (None: not sourced, left to the resolver)."""
        return {
            "neuronx-distributed-inference": self.nxdi,
            "neuronx-distributed": self.nxd_core,
            "neuronx-cc": self.neuronx_cc,
            "torch-neuronx": self.torch_neuronx,
        }

    def pip_install_command(self) -> str:
        """The command to run on an inf2/trn1 host (packages come from AWS's Neuron pip repository)."""
        reqs = " ".join(f'"{name}=={version}"' if version else name for name, version in self.pins().items())
        return f"python -m pip install --extra-index-url {NEURON_PIP_INDEX} {reqs}"


SDKS: dict[str, NeuronSdk] = {
    "2.28": NeuronSdk(
        sdk="2.28",
        nxdi="0.8.16251",
        nxd_core="0.17.26814",
        neuronx_cc="2.23.6484.0",
        torch_neuronx=None,  # not in the sources we read; NxDI's own requirement picks it
        note="Last release whose NxD Inference supports Inf2/Trn1 (the 2.29 release notes tell Inf2/Trn1 users "
        "to pin 2.28). Default.",
        sources=(
            "docs/neuron-stack.md: aws-neuron-sdk release-notes/components/nxd-inference.rst:61,79 (2.28 = NxDI "
            "0.8.16251, the last for Inf2/Trn1; source commit cd3abf3)",
            "Neuron docs v2.28.1 release-notes/releasecontent.html (neuronx-cc 2.23.6484.0, "
            "neuronx_distributed 0.17.26814)",
        ),
    ),
    "2.31": NeuronSdk(
        sdk="2.31",
        nxdi="0.10.18399",
        nxd_core="0.19.28492",
        neuronx_cc="2.26.6360.0",
        torch_neuronx="2.9.0.2.15.32035",
        note="Final NxDI maintenance release. Inf2/Trn1 support is disputed: the NxDI 2.29 release notes drop "
        "Inf2/Trn1, while the Neuron vLLM DLC sdk2.31.1 still lists inf2. Verify on a device before relying on it.",
        sources=(
            "docs/neuron-stack.md: aws-neuron-sdk announce-nxdi-maintenance-support-2-31.rst:10 (NxDI 0.10.18399, "
            "NxD core 0.19.28492)",
            "docs/neuron-stack.md: aws-neuron/deep-learning-containers README.md:94 (0.16.0-neuronx-py312-sdk2.31.1 "
            "lists inf2)",
            "Neuron docs v2.31.0 release-notes/components/index.html (neuronx-cc 2.26.6360.0, "
            "torch-neuronx 2.9.0.2.15.32035)",
        ),
    ),
}
DEFAULT_SDK = "2.28"


def neuron_sdk(version: str = DEFAULT_SDK) -> NeuronSdk:
    """Look up a supported SDK release; anything else is a user error."""
    try:
        return SDKS[version]
    except KeyError:
        raise NeuronforgeError(
            f"Neuron SDK {version!r} is not one neuronforge targets",
            f"use one of: {', '.join(SDKS)} (default {DEFAULT_SDK})",
        ) from None


def install_hint(version: str = DEFAULT_SDK) -> str:
    """What to tell a user whose host lacks NxD Inference."""
    sdk = neuron_sdk(version)
    return f"on an inf2/trn1 host, use the Neuron DLAMI for SDK {sdk.sdk} or run: {sdk.pip_install_command()}"
