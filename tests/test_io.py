"""Reading images and prompt files, writing labels and overlays."""

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage import data

from napari_sam.errors import InputFileError
from napari_sam.io import (
    overlay_image,
    read_boxes_csv,
    read_image,
    read_points_csv,
    write_labels,
)


def test_round_trip_formats(tmp_path):
    coins = data.coins()
    tifffile.imwrite(tmp_path / "a.tif", coins)
    Image.fromarray(data.astronaut()).save(tmp_path / "b.png")
    Image.fromarray(coins).save(tmp_path / "c.jpg", quality=95)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), coins)
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), data.astronaut())
    assert read_image(tmp_path / "c.jpg").shape == coins.shape


def test_unreadable_images(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(InputFileError, match="unsupported file type"):
        read_image(tmp_path / "x.gif")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(InputFileError, match="Cannot read image .*broken.png"):
        read_image(tmp_path / "broken.png")


def test_write_labels_picks_dtype_and_is_atomic(tmp_path):
    labels = np.zeros((20, 30), np.int64)
    labels[2:5, 3:9] = 300
    path = write_labels(tmp_path / "out" / "labels.tif", labels)
    back = tifffile.imread(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    assert [p.name for p in path.parent.iterdir()] == ["labels.tif"]
    with pytest.raises(InputFileError, match=r"\.tif"):
        write_labels(tmp_path / "labels.png", labels)


def test_boxes_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("x0,y0,x1,y1\n1,2,30,40\n5, 6, 7, 8\n")
    (tmp_path / "n.csv").write_text("1,2,30,40\n\n5,6,7,8\n")
    for name in ("h.csv", "n.csv"):
        np.testing.assert_array_equal(read_boxes_csv(tmp_path / name), [[1, 2, 30, 40], [5, 6, 7, 8]])


@pytest.mark.parametrize(
    "text, message",
    [("", "empty"), ("x0,y0,x1,y1\n", "no boxes"), ("1,2,3\n", "got 3"), ("1,2,3,a\n", "not a number"),
     ("1,2,3,nan\n", "finite")],
)
def test_bad_boxes_csv(tmp_path, text, message):
    (tmp_path / "b.csv").write_text(text)
    with pytest.raises(InputFileError, match=message):
        read_boxes_csv(tmp_path / "b.csv")


def test_points_csv(tmp_path):
    (tmp_path / "p.csv").write_text("x,y,label,object\n10,20,1,1\n12,22,0,1\n50,60,1,2\n")
    coords, labels, objects = read_points_csv(tmp_path / "p.csv")
    np.testing.assert_array_equal(coords, [[10, 20], [12, 22], [50, 60]])
    np.testing.assert_array_equal(labels, [1, 0, 1])
    np.testing.assert_array_equal(objects, [1, 1, 2])
    (tmp_path / "q.csv").write_text("10,20\n30,40\n")
    coords, labels, objects = read_points_csv(tmp_path / "q.csv")
    np.testing.assert_array_equal(labels, [1, 1])
    np.testing.assert_array_equal(objects, [1, 2])
    (tmp_path / "r.csv").write_text("10,20,2\n")
    with pytest.raises(InputFileError, match="1 \\(foreground\\) or 0"):
        read_points_csv(tmp_path / "r.csv")


def test_overlay_marks_objects():
    rgb = np.dstack([data.camera()] * 3)
    labels = np.zeros(rgb.shape[:2], np.uint16)
    labels[100:200, 100:200] = 1
    picture = overlay_image(rgb, labels)
    assert picture.shape == rgb.shape and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[0:50, 0:50], rgb[0:50, 0:50])  # background untouched
    assert (picture[100, 100:200] == 255).all()  # white outline
    assert not np.array_equal(picture[150, 150], rgb[150, 150])  # tinted inside


def test_an_image_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    import napari_sam.io as io

    path = tmp_path / "large.tif"
    tifffile.imwrite(path, np.zeros((1000, 1000), np.uint16), compression="zlib")  # 2 MB decoded, a few kB on disk
    monkeypatch.setattr(io, "physical_memory_bytes", lambda: 3_000_000)  # a machine of 3 MB
    with pytest.raises(InputFileError, match=r"1000 x 1000 uint16 image.*Open it lazily"):
        io.read_image(path)
    monkeypatch.setattr(io, "physical_memory_bytes", lambda: 8 * 2**30)
    assert io.read_image(path).shape == (1000, 1000)
