"""Capability sets as masks; names the running kernel does not know are skipped with a warning."""

from __future__ import annotations

from stockade.kernel import caps as kcaps
from stockade.runtime.finalize import CapabilitySets
from stockade.spec.runtime import Capabilities


def test_masks_per_set():
    sets = CapabilitySets(Capabilities({"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"]}))
    assert sets.bounding == (1 << 0) | (1 << 5)
    assert sets.effective == 1 << 5
    assert sets.permitted == sets.inheritable == sets.ambient == 0


def test_capabilities_unknown_to_this_kernel_are_skipped_with_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(kcaps, "last_cap", lambda: 37)  # a kernel from before CAP_PERFMON (38)
    sets = CapabilitySets(Capabilities({"bounding": ["CAP_KILL", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]}))
    assert sets.bounding == 1 << 5
    err = capsys.readouterr().err
    assert "CAP_BPF is unknown to this kernel, skipped" in err
    assert "CAP_CHECKPOINT_RESTORE is unknown to this kernel, skipped" in err


def test_no_capabilities_object_means_none():
    sets = CapabilitySets(None)
    assert sets.bounding == sets.effective == sets.ambient == 0
