"""ablations: the senet-ablate experiment harness (specs, data, training, sweeps, tracking, reports, CLI)."""
