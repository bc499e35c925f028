"""Images as users have them become the RGB input the models expect."""

import numpy as np
import pytest
from skimage import data

from napari_sam.errors import ImageError
from napari_sam.preprocess import as_rgb, model_input, resized_shape
from napari_sam.registry import get_spec


def test_uint8_rgb_is_untouched():
    image = data.astronaut()
    rgb = as_rgb(image)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, image)


def test_gray_uint8_becomes_three_equal_channels():
    image = data.camera()
    rgb = as_rgb(image)
    assert rgb.shape == image.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], image)


def test_rgba_drops_alpha():
    image = np.dstack([data.astronaut(), np.full(data.astronaut().shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(as_rgb(image), data.astronaut())


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_other_dtypes_scale_robustly_to_0_255(dtype):
    coins = data.coins().astype(np.float64)
    offset = 1000.0 if np.issubdtype(dtype, np.unsignedinteger) else -5000.0  # negative values where possible
    image = (coins * 200.0 + offset).astype(dtype)
    image.flat[0] = np.iinfo(np.int32).max if np.issubdtype(dtype, np.signedinteger) else image.flat[0]
    rgb = as_rgb(image)
    assert rgb.dtype == np.float32 and rgb.shape == coins.shape + (3,)
    assert rgb.min() == 0.0 and rgb.max() == 255.0
    # one hot pixel does not flatten the rest of the image: contrast is kept
    assert np.corrcoef(rgb[..., 0].ravel()[1:], coins.ravel()[1:])[0, 1] > 0.99


def test_scaling_is_idempotent():
    image = data.coins().astype(np.float32) * 3.7 + 11
    once = as_rgb(image)
    np.testing.assert_allclose(as_rgb(once), once, atol=1e-3)


def test_bool_image():
    rgb = as_rgb(data.binary_blobs(length=64, rng=1))
    assert rgb.dtype == np.uint8 and set(np.unique(rgb)) == {0, 255}


def test_constant_and_nan_images_have_defined_results():
    assert not as_rgb(np.full((32, 40), 3.5)).any()
    assert not as_rgb(np.full((32, 40), np.nan)).any()
    image = data.coins().astype(np.float32)
    image[10:20, 10:20] = np.nan
    image[0, 0] = np.inf
    rgb = as_rgb(image)
    assert np.isfinite(rgb).all()
    assert (rgb[10:20, 10:20] == 0).all()  # NaN -> the channel's lowest value


def test_multichannel_with_channel_axis_and_choice():
    cells = np.stack([data.coins(), data.coins()[::-1], np.zeros_like(data.coins())]).astype(np.uint16)
    cells = np.concatenate([cells, cells[:2]])  # 5 channels, channel-first
    with pytest.raises(ImageError, match="choose up to three"):
        as_rgb(cells, channel_axis=0)
    rgb = as_rgb(cells, channel_axis=0, channels=[1])
    assert rgb.shape == data.coins().shape + (3,)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    two = as_rgb(cells, channel_axis=0, channels=[0, 1])
    assert not two[..., 2].any() and two[..., 0].any() and two[..., 1].any()


@pytest.mark.parametrize(
    "shape, message",
    [((5, 64, 64), "3D stack"), ((2, 3, 64, 64), "4 dimensions"), ((64,), "1 dimensions"), ((1, 64), "too small")],
)
def test_stacks_and_odd_shapes_are_rejected_with_advice(shape, message):
    with pytest.raises(ImageError, match=message):
        as_rgb(np.zeros(shape, np.uint8))


def test_bad_channel_choices():
    with pytest.raises(ImageError, match="do not exist"):
        as_rgb(data.astronaut(), channels=[0, 5])
    with pytest.raises(ImageError, match="channel_axis=4 does not exist"):
        as_rgb(np.zeros((4, 32, 32)), channel_axis=4)
    with pytest.raises(ImageError, match="dtype"):
        as_rgb(np.array([["a", "b"], ["c", "d"]]))


def test_model_input_geometry_and_normalisation():
    image = data.coins()  # 303 x 384
    sam = get_spec("vit_b")
    tensor, input_size = model_input(as_rgb(image), sam)
    assert tuple(tensor.shape) == (1, 3, 1024, 1024)
    assert input_size == resized_shape(image.shape, 1024) == (808, 1024)
    assert (tensor[0, :, 808:, :] == 0).all()  # zero padding at the bottom
    lite = get_spec("lite_medsam")
    tensor, input_size = model_input(as_rgb(image), lite)
    assert tuple(tensor.shape) == (1, 3, 256, 256) and input_size == (202, 256)
    inside = tensor[0, :, :202, :]
    assert float(inside.min()) == 0.0 and float(inside.max()) == 1.0
