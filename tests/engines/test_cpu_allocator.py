"""The CPU allocator setting: freed memory is reused without page faults, and bad modes are named."""

import json
import platform
import subprocess
import sys

import pytest

from dagman_components.engines import CPU_MALLOC_MODES, configure_cpu_malloc

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the setting acts on glibc's malloc"
)

# a fresh process per mode: the setting is process-wide and must not leak into the test session
PROBE = """
import json, resource, sys
import torch
from dagman_components.engines import configure_cpu_malloc

kept = configure_cpu_malloc(sys.argv[1], sys.argv[2])

def faults_of_a_64_mib_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_64_mib_tensor()  # the first allocation always faults its pages in
print(json.dumps({"kept": kept, "faults": faults_of_a_64_mib_tensor()}))
"""


def _probe(mode: str, device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, device], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_is_reused_without_page_faults():
    system, keep = _probe("system", "cpu"), _probe("keep", "cpu")
    # 64 MiB is 16,384 pages of 4 KiB: glibc maps it afresh on every allocation unless told to keep it
    assert not system["kept"] and system["faults"] > 8000
    assert keep["kept"] and keep["faults"] < 500


@glibc_only
def test_keep_leaves_a_cuda_run_on_the_system_allocator():
    assert _probe("keep", "cuda")["kept"] is False


def test_an_unknown_mode_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"cpu_malloc must be one of .*'keep'.*got 'fast'"):
        configure_cpu_malloc("fast")
    assert CPU_MALLOC_MODES == ("system", "keep")
