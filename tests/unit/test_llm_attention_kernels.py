"""The engine's choice of attention kernels on CUDA (attention.choose_kernels): cuDNN's left
out, for the process; nothing changed on CPU. The flag is torch's global switch, so this runs
without a GPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from kubemaas_runtime.llm.attention import choose_kernels


@pytest.fixture
def cudnn_flag() -> Iterator[None]:
    before = torch.backends.cuda.cudnn_sdp_enabled()  # type: ignore[no-untyped-call]
    torch.backends.cuda.enable_cudnn_sdp(True)
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


def test_cuda_leaves_cudnn_out(cudnn_flag: None) -> None:
    choose_kernels(torch.device("cuda"))
    assert not torch.backends.cuda.cudnn_sdp_enabled()  # type: ignore[no-untyped-call]
    assert torch.backends.cuda.flash_sdp_enabled()  # type: ignore[no-untyped-call]
    assert torch.backends.cuda.mem_efficient_sdp_enabled()  # type: ignore[no-untyped-call]


def test_cpu_changes_nothing(cudnn_flag: None) -> None:
    choose_kernels(torch.device("cpu"))
    assert torch.backends.cuda.cudnn_sdp_enabled()  # type: ignore[no-untyped-call]
