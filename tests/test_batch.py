"""Batches: many images into label images, resumable, with a summary; on one machine and on Dask.

Real data: crops of DSB 2018's ``img2d.tif`` (stardist's wheel) with boxes of their
ground-truth nuclei, so every image segments in about a second with LiteMedSAM.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.measure import regionprops
from worker_kill import run_killing_one_worker

from napari_sam.batch import FAILED, NOT_RUN, SEGMENTED, SKIPPED, SUMMARY_COLUMNS, plan_batch, segment_images
from napari_sam.errors import InputFileError
from napari_sam.files import expand_inputs, mirrored_output
from napari_sam.image_task import SegmentSettings

CROP = 128
BOXES_PER_IMAGE = 3


def _write_folder(folder: Path, image: np.ndarray, truth: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """``count`` crops of ``image`` as TIFFs, and a boxes CSV of 3 true nuclei each, in ``folder/boxes``.

    Returns each crop's true labels of the boxed nuclei (box row i -> label i + 1).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "boxes").mkdir(exist_ok=True)
    truths = {}
    for cell in range((512 // CROP) ** 2):
        y, x = divmod(cell, 512 // CROP)
        window = np.s_[y * CROP:(y + 1) * CROP, x * CROP:(x + 1) * CROP]
        crop, crop_truth = image[window], truth[window]
        props = [p for p in regionprops(crop_truth) if p.area > 80 and min(p.bbox[:2]) > 0
                 and p.bbox[2] < CROP and p.bbox[3] < CROP][:BOXES_PER_IMAGE]
        if len(props) < BOXES_PER_IMAGE:
            continue
        name = f"cells_{len(truths):02d}"
        tifffile.imwrite(folder / f"{name}.tif", crop)
        kept = np.zeros_like(crop_truth)
        with open(folder / "boxes" / f"{name}.csv", "w") as handle:
            for row, p in enumerate(props):
                y0, x0, y1, x1 = p.bbox
                handle.write(f"{x0},{y0},{x1},{y1}\n")
                kept[crop_truth == p.label] = row + 1
        truths[name] = kept
        if len(truths) == count:
            return truths
    raise AssertionError(f"fewer than {count} crops hold {BOXES_PER_IMAGE} whole nuclei")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, dsb_nuclei):
    image, truth = dsb_nuclei
    root = tmp_path_factory.mktemp("plate")
    truths = _write_folder(root, image, truth, 5)
    return root, truths


def _summary(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---------------------------------------------------------------- planning (no model)


def test_inputs_from_folders_globs_and_list_files_mirror_into_the_output_folder(tmp_path):
    for rel in ("a/one.tif", "a/one_labels.tif", "a/b/two.png", "three.tif", "a/.hidden.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.name for p in expand_inputs(tmp_path / "a")] == ["one.tif"]  # labels and hidden files left out
    assert [p.name for p in expand_inputs(tmp_path / "a", recursive=True)] == ["two.png", "one.tif"]
    (tmp_path / "list.txt").write_text("# inputs\na/one.tif\nthree.tif\n\na/one.tif\n")
    assert [p.name for p in expand_inputs(tmp_path / "list.txt")] == ["one.tif", "three.tif"]  # each once
    assert [p.name for p in expand_inputs(str(tmp_path / "*.tif"))] == ["three.tif"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="holds no image files.*add --recursive"):
        expand_inputs(tmp_path / "empty")
    assert expand_inputs(tmp_path / "nowhere.tif") == [tmp_path / "nowhere.tif"]  # reading it will say so
    out = tmp_path / "out"
    assert mirrored_output(tmp_path / "a/b/two.png", tmp_path, out) == out / "a/b/two_labels.tif"
    tasks, failed = plan_batch([tmp_path / "a", tmp_path / "three.tif"], out, recursive=True)
    assert [t.output.relative_to(out).as_posix() for t in tasks] == ["a/b/two_labels.tif", "a/one_labels.tif",
                                                                    "three_labels.tif"] and not failed


def test_a_batch_refuses_two_inputs_with_one_output_and_reports_missing_prompt_files(tmp_path):
    for name in ("x.tif", "x.png", "y.tif"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputFileError, match="would both be written to"):
        plan_batch(tmp_path, tmp_path / "out")
    (tmp_path / "x.png").unlink()
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "x_boxes.csv").write_text("1,1,5,5\n")
    tasks, failed = plan_batch(tmp_path, tmp_path / "out", boxes=tmp_path / "boxes")
    assert [t.boxes.name for t in tasks] == ["x_boxes.csv"]
    assert len(failed) == 1 and failed[0].path.endswith("y.tif") and "No boxes file for y.tif" in failed[0].error


# ---------------------------------------------------------------- one machine


def test_a_folder_is_segmented_resumed_and_summarised(folder, tmp_path, lite_medsam):
    root, truths = folder
    (root / "broken.tif").write_bytes(b"not a tiff at all")
    (root / "boxes" / "broken.csv").write_text("1,1,9,9\n")
    try:
        out = tmp_path / "labels"
        seen = []
        summary = segment_images(root, out, boxes=root / "boxes", model=lite_medsam,
                                 report=lambda record, done, total: seen.append((record.status, done, total)))
    finally:
        (root / "broken.tif").unlink()
        (root / "boxes" / "broken.csv").unlink()
    rows = _summary(summary.table)
    assert list(rows[0]) == list(SUMMARY_COLUMNS) and len(rows) == 6
    by_name = {Path(r["path"]).stem: r for r in rows}
    assert by_name["broken"]["status"] == FAILED and "Cannot read image" in by_name["broken"]["error"]
    assert [s for s, _, _ in seen].count(SEGMENTED) == 5 and seen[-1][1:] == (6, 6)
    ious = []
    for name, truth in truths.items():
        labels = tifffile.imread(out / f"{name}_labels.tif")
        assert by_name[name]["status"] == SEGMENTED and int(by_name[name]["objects"]) == BOXES_PER_IMAGE
        ious += [_iou(labels == i, truth == i) for i in range(1, BOXES_PER_IMAGE + 1)]
    assert np.mean(ious) > 0.7, ious  # row i of each image's boxes CSV is label i + 1 on its nucleus
    assert not summary.complete and len(summary.failed) == 1

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*_labels.tif")}
    again = segment_images(root, out, boxes=root / "boxes", model=lite_medsam)  # the rerun does nothing
    assert again.complete and again.count(SKIPPED) == 5
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_labels.tif")} == stamps
    assert [r["objects"] for r in _summary(again.table)] == [str(BOXES_PER_IMAGE)] * 5  # carried from the last run


def test_a_cancelled_batch_resumes_with_only_what_is_left(folder, tmp_path, lite_medsam):
    root, _ = folder
    out = tmp_path / "labels"
    done = []
    summary = segment_images(root, out, boxes=root / "boxes", model=lite_medsam,
                             report=lambda record, *_: done.append(record.status), cancel=lambda: len(done) >= 2)
    assert summary.count(SEGMENTED) == 2 and summary.count(NOT_RUN) == 3 and not summary.complete
    assert [r["status"] for r in _summary(summary.table)].count(NOT_RUN) == 3
    rest = segment_images(root, out, boxes=root / "boxes", model=lite_medsam)
    assert rest.count(SKIPPED) == 2 and rest.count(SEGMENTED) == 3 and rest.complete
    forced = segment_images(root, out, boxes=root / "boxes", model=lite_medsam, overwrite=True,
                            cancel=lambda: True)
    assert forced.count(NOT_RUN) == 5  # --overwrite redoes all (here: cancelled before the first)
    assert len(list(out.glob("*_labels.tif"))) == 5  # and a cancelled overwrite removed nothing


@pytest.mark.slow
def test_a_killed_command_redoes_at_most_the_image_in_flight(folder, tmp_path):
    """SIGKILL ``samkit segment DIR -o OUT`` after its second image, rerun it: nothing is redone twice."""
    root, truths = folder
    out = tmp_path / "labels"
    command = [sys.executable, "-m", "napari_sam.cli", "segment", str(root), "-o", str(out), "--boxes",
               str(root / "boxes")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(list(out.glob("*_labels.tif"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = {p.name for p in out.glob("*_labels.tif")}
    assert 2 <= len(written) < 5
    for path in out.glob("*_labels.tif"):  # every label image there is complete
        assert tifffile.imread(path).max() == BOXES_PER_IMAGE
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = _summary(out / "samkit_summary.csv")
    assert sum(r["status"] == SKIPPED for r in rows) == len(written)
    assert sum(r["status"] == SEGMENTED for r in rows) == 5 - len(written)
    assert not list(out.glob(".*.part"))  # the killed run's temporary file was cleaned up
    assert f"5 images: {5 - len(written)} segmented, {len(written)} already done" in rerun.stderr


def test_the_command_line_batch_exit_status_says_whether_anything_failed(folder, tmp_path, capsys):
    from napari_sam.cli import SOME_FAILED, main

    root, _ = folder
    out = tmp_path / "labels"
    (tmp_path / "list.txt").write_text(f"{root / 'cells_00.tif'}\n{root / 'cells_01.tif'}\n")
    assert main(["segment", str(tmp_path / "list.txt"), "-o", str(out), "--boxes", str(root / "boxes"),
                 "--overlay"]) == 0
    err = capsys.readouterr().err
    assert "[2/2]" in err and "2 images: 2 segmented" in err  # one line per image when not on a terminal
    assert (out / "cells_00_overlay.png").is_file() and (out / "cells_01_labels.tif").is_file()
    code = main(["segment", str(root / "cells_00.tif"), str(tmp_path / "missing.tif"), "-o", str(out), "--boxes",
                 str(root / "boxes")])
    err = capsys.readouterr().err
    assert code == SOME_FAILED and "missing.tif does not exist" in err
    assert main(["segment", str(root), "-o", str(out), "--overlay", "x.png"]) == 2
    assert "--overlay takes no file name" in capsys.readouterr().err


# ---------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def serial_labels(folder, tmp_path_factory, lite_medsam):
    root, _ = folder
    out = tmp_path_factory.mktemp("serial")
    assert segment_images(root, out, boxes=root / "boxes", model=lite_medsam).complete
    return {p.name: tifffile.imread(p) for p in out.glob("*_labels.tif")}


@pytest.mark.slow
def test_dask_workers_give_the_serial_labels_even_when_a_worker_is_killed(folder, serial_labels, tmp_path):
    """A LocalCluster of 2 processes: one worker is killed mid-run; Dask retries its task elsewhere."""
    from napari_sam.cluster import connect

    root, _ = folder
    out = tmp_path / "labels"
    client, cluster, _threads = connect(workers=2)
    with cluster, client:  # the nanny starts a new worker; the killed one's task runs again
        summary = run_killing_one_worker(client, lambda: segment_images(
            root, out, SegmentSettings(), boxes=root / "boxes", client=client, threads=1),
            started=lambda: bool(list(out.glob("*_labels.tif"))))
    assert summary.complete and summary.count(SEGMENTED) == 5, summary.records
    assert len(_summary(summary.table)) == 5  # each image once
    written = {p.name: tifffile.imread(p) for p in out.glob("*_labels.tif")}
    assert written.keys() == serial_labels.keys()
    for name, labels in written.items():
        assert np.array_equal(labels, serial_labels[name]), name  # identical to the serial run
    assert not list(out.glob(".*.part"))


@pytest.mark.slow
def test_workers_option_starts_and_closes_a_local_cluster(folder, serial_labels, tmp_path, capsys):
    from napari_sam.cli import main

    root, _ = folder
    out = tmp_path / "labels"
    assert main(["segment", str(root), "-o", str(out), "--boxes", str(root / "boxes"), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "on Dask: 2 workers, 1 torch thread(s) each" in err and "5 images: 5 segmented" in err
    for name, labels in serial_labels.items():
        assert np.array_equal(tifffile.imread(out / name), labels)


# ---------------------------------------------------------------- napari


@pytest.mark.gui
def test_the_automatic_widget_segments_a_folder_and_a_cancel_keeps_what_is_done(make_napari_viewer, qtbot, folder,
                                                                                 tmp_path, lite_medsam):
    from napari_sam._widgets.automatic import AutomaticSegmentationWidget

    root, truths = folder
    two = tmp_path / "two"
    two.mkdir()
    for name in list(truths)[:2]:
        (two / f"{name}.tif").write_bytes((root / f"{name}.tif").read_bytes())
    viewer = make_napari_viewer()
    widget = AutomaticSegmentationWidget(viewer, model=lite_medsam)
    viewer.window.add_dock_widget(widget)
    section = widget.folder
    assert section.run() is None and "Choose the image folder" in section.status.value
    section.input.value, section.output.value = two, tmp_path / "out"
    assert not widget.run_on.workers.native.isVisibleTo(widget.native)
    widget.run_on.where.value = "local"
    assert widget.run_on.workers.native.isVisibleTo(widget.native)
    widget.run_on.where.value = "here"
    assert section.run() is not None
    qtbot.waitUntil(lambda: section.summary is not None, timeout=300_000)
    qtbot.waitUntil(lambda: not section.running, timeout=10_000)
    assert section.summary.complete and section.summary.count(SEGMENTED) == 2, section.summary.records
    assert "2 images: 2 segmented" in section.status.value and section.progress.value == 2
    for name in list(truths)[:2]:  # segment everything found the nuclei
        labels = tifffile.imread(tmp_path / "out" / f"{name}_labels.tif")
        assert len(np.unique(labels)) > 5
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*_labels.tif")}

    section.overwrite.value = True
    assert section.run() is not None
    section.cancel()  # stops during the first image: nothing is half-written, nothing done is lost
    qtbot.waitUntil(lambda: not section.running, timeout=300_000)
    assert not section.summary.complete and section.summary.count(NOT_RUN) >= 1
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*_labels.tif")}.keys() == before.keys()
    assert len(viewer.layers) == 0  # no layer was added or changed


def test_a_batch_of_stacks_takes_the_stack_options(folder, tmp_path, lite_medsam):
    """--axes applies to every image of a batch: two 2-frame time-lapses, boxes on every frame."""
    root, truths = folder
    stacks = tmp_path / "movies"
    (stacks / "boxes").mkdir(parents=True)
    names = list(truths)[:2]
    for name in names:
        frame = tifffile.imread(root / f"{name}.tif")
        tifffile.imwrite(stacks / f"{name}.tif", np.stack([frame, frame]))
        (stacks / "boxes" / f"{name}.csv").write_text((root / "boxes" / f"{name}.csv").read_text())
    summary = segment_images(stacks, tmp_path / "out", SegmentSettings(axes="TYX"), boxes=stacks / "boxes",
                             model=lite_medsam)
    assert summary.complete and summary.count(SEGMENTED) == 2, summary.records
    for name in names:
        labels = tifffile.imread(tmp_path / "out" / f"{name}_labels.tif")
        assert labels.shape == (2, CROP, CROP)
        assert np.array_equal(labels[0], labels[1]) and set(np.unique(labels)) == {0, 1, 2, 3}
        assert np.mean([_iou(labels[0] == i, truths[name] == i) for i in (1, 2, 3)]) > 0.7
    flat = segment_images(stacks, tmp_path / "flat", boxes=stacks / "boxes", model=lite_medsam)
    assert flat.count(FAILED) == 2 and "--axes" in flat.failed[0].error  # a stack without --axes: say so
