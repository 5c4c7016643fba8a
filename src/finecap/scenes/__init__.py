"""The scenes world: finecap's embedded, procedurally generated captioning dataset.

A small "CLEVR for captioning": textured backgrounds with 1-4 shapes that differ in shape,
colour, size and pattern, generic COCO-like reference captions (the bias CLIP rewards fight),
detailed descriptions (CLIP training text), FineCapEval-style annotations and the ground-truth
scene. `generate_world(out_dir, n, seed)` writes it all; see `finecap.scenes.generate`.
"""

from finecap.scenes.generate import WorldConfig, generate_world, write_world
from finecap.scenes.language import describe_scene, finecapeval_rows, reference_captions
from finecap.scenes.render import render_scene
from finecap.scenes.world import (
    BACKGROUNDS,
    COLORS,
    PATTERNS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    as_scene,
    compute_relations,
    salient_object,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "PATTERNS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
    "WorldConfig",
    "as_scene",
    "compute_relations",
    "describe_scene",
    "finecapeval_rows",
    "generate_world",
    "reference_captions",
    "render_scene",
    "salient_object",
    "sample_scene",
    "write_world",
]
