"""Datasets (validated AnnData), gene-id mapping, reference networks, the simulator."""

from scfm_audit.data._dataset import (
    DatasetError,
    DatasetSpec,
    control_mask,
    counts_matrix,
    get_spec,
    load_dataset,
    perturbation_groups,
    validate_dataset,
)
from scfm_audit.data._genes import gene_id_map, to_ensembl, to_symbol
from scfm_audit.data._network import ReferenceNetwork
from scfm_audit.data._references import (
    REFERENCE_LOADERS,
    ReferenceFormatError,
    load_reference,
)
from scfm_audit.data._simulate import (
    SimulatedBenchmark,
    SimulationParams,
    simulate_perturbseq,
    write_benchmark,
)

__all__ = [
    "REFERENCE_LOADERS",
    "DatasetError",
    "DatasetSpec",
    "ReferenceFormatError",
    "ReferenceNetwork",
    "SimulatedBenchmark",
    "SimulationParams",
    "control_mask",
    "counts_matrix",
    "gene_id_map",
    "get_spec",
    "load_dataset",
    "load_reference",
    "perturbation_groups",
    "simulate_perturbseq",
    "to_ensembl",
    "to_symbol",
    "validate_dataset",
    "write_benchmark",
]
