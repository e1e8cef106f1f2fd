"""IRNet-17 / IRNet-48 on composition + structure attributes (the IRNet papers' best setting).

The network is IRNet's (``harness/models/irnet.py``: FC-BN-ReLU layers, each with its own
shortcut); only the input differs: the ``magpie_structure`` featurizer's 145 Magpie / Ward-2016
composition attributes joined to the Ward-2017 Voronoi structure attributes of matminer (the
IRNet papers' "composition + structure" setting; 145 + 128 = 273 columns with matminer's
presets, see ``harness/featurize/structure_attributes.py``). The input width comes from
``feature_info["n_features"]``; inputs are standardised from training rows inside the model as
for composition-only IRNet. Paper recipe: Adam, lr 1e-4, batch 32, MAE.
"""

from __future__ import annotations

import dataclasses

from harness.models.irnet import IRNET17, IRNET48_STACKS
from harness.models.registry import MAGPIE_STRUCTURE, register

IRNET17_STRUCTURE = register(
    dataclasses.replace(
        IRNET17,
        name="irnet17_structure",
        input_kind=MAGPIE_STRUCTURE,
        search_space="irnet_structure.yaml",
        display_name="IRNet-17 (composition + structure)",
    ),
    groups=("all-structure",),
)
IRNET48_STRUCTURE = register(
    dataclasses.replace(
        IRNET17,
        name="irnet48_structure",
        input_kind=MAGPIE_STRUCTURE,
        search_space="irnet_structure.yaml",
        display_name="IRNet-48 (composition + structure)",
        config_overrides={"stacks": IRNET48_STACKS},
    ),
    groups=("all-structure",),
)
