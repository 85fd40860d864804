"""Segment images, folders of images and videos with any model file; write label maps and colour masks.

Outputs (under ``output_dir``), for an image ``NAME.ext`` (or ``FOLDER/sub/NAME.ext`` from a folder,
whose relative path is kept under ``FOLDER/``):

- ``labels/NAME.png``: the label map, one uint8 class id per pixel (16-bit PNG if > 256 classes);
- ``color/NAME.png``: the label map in the model's palette (RGB);
- ``overlay/NAME.png`` with ``overlay=True``: the colour mask blended over the image (``alpha``).

A video ``CLIP.mp4`` (read with OpenCV) gives videos, not thousands of files: ``video/CLIP.color.mp4``
(and ``video/CLIP.overlay.mp4`` with ``overlay``) at the source frame rate, MPEG-4 Part 2 (``mp4v``).
Video codecs are lossy, so class ids are never stored in a video: ``video_frames=True`` also writes
``labels/CLIP/000000.png`` ... per frame. Every file is written atomically.

Images run pipelined (:meth:`Predictor.run`): a reader thread decodes and prepares the next images
(:meth:`Runner.prepare <pspnet_deploy.runners.base.Runner.prepare>`: uint8 pixels for a uint8
model) while the model runs on the current one, and a writer thread colours and writes the finished
ones; the queues between them hold at most ``queue_depth`` images each, so memory stays flat on any
number of images, and the writer takes them in input order. With ``resume`` an image whose outputs
all exist (a killed run's finished ones: each file is renamed into place only when complete) is
skipped.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .data.base import default_palette
from .data.io import IMAGE_EXTS, ensure_rgb, read_image, write_png_atomic
from .errors import UserError
from .sliding import make_predictor
from .utils import atomic_path, native_stderr_captured, output_dir

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class Item:
    path: Path
    name: str  # relative output name without extension, e.g. "street/0001"
    kind: str  # "image" or "video"


@dataclass
class PredictResult:
    images: int = 0
    videos: int = 0
    frames: int = 0
    files: list[str] = field(default_factory=list)
    skipped: int = 0  # images whose outputs were all there already (resume)

    def to_dict(self) -> dict:
        return {"images": self.images, "videos": self.videos, "frames": self.frames, "files": list(self.files),
                "skipped": self.skipped}


def collect_inputs(inputs: list[str | Path], exclude: str | Path | None = None) -> list[Item]:
    """Images, folders (images found recursively, relative paths kept) and videos, in a stable order.

    Files under ``exclude`` (the output folder) are skipped, so an output folder inside an input
    folder is never segmented again on the next run."""
    skip = Path(os.path.abspath(exclude)) if exclude is not None else None

    def outside(f: Path) -> bool:
        return skip is None or not Path(os.path.abspath(f)).is_relative_to(skip)

    if not inputs:
        raise UserError("no inputs given; pass image files, folders of images or videos")
    items: list[Item] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS and outside(f))
            if not found:
                raise UserError(f"{p}: no images in this folder (looked for {', '.join(IMAGE_EXTS)}"
                                + (f", outside the output folder {exclude}" if skip is not None else "") + ")")
            base = p.resolve().name or "input"
            items += [Item(f, f"{base}/{f.relative_to(p).with_suffix('').as_posix()}", "image") for f in found]
        elif p.is_file():
            ext = p.suffix.lower()
            if ext in VIDEO_EXTS:
                items.append(Item(p, p.stem, "video"))
            elif ext in IMAGE_EXTS:
                items.append(Item(p, p.stem, "image"))
            else:
                raise UserError(f"{p}: unknown input type {ext or '(no extension)'}; expected an image "
                                f"({', '.join(IMAGE_EXTS)}) or a video ({', '.join(VIDEO_EXTS)})")
        else:
            raise UserError(f"{p}: input not found")
    seen: dict[str, Path] = {}
    for it in items:
        key = f"{it.kind}:{it.name}"
        if key in seen:
            raise UserError(f"{it.path} and {seen[key]} would both be written as {it.name}; rename one or pass "
                            f"their folders instead")
        seen[key] = it.path
    return items


def palette_array(palette: list[list[int]], num_classes: int) -> np.ndarray:
    """(256, 3) uint8 lookup table: the model's palette, the VOC palette for ids beyond it, black above."""
    pal = [list(map(int, c))[:3] for c in palette]
    if len(pal) < num_classes:
        pal += default_palette(num_classes)[len(pal):]
    lut = np.zeros((max(256, num_classes), 3), np.uint8)
    lut[: len(pal)] = np.clip(np.asarray(pal, np.int64).reshape(-1, 3), 0, 255)
    return lut


def colorize(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """HxW ids -> HxWx3 RGB uint8."""
    return lut[np.clip(labels, 0, len(lut) - 1)]


def overlay(image_rgb: np.ndarray, color_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` of the colour mask over ``1 - alpha`` of the image."""
    return cv2.addWeighted(color_rgb, float(alpha), image_rgb, 1.0 - float(alpha), 0.0)


def label_image(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return labels.astype(np.uint8 if num_classes <= 256 else np.uint16)


class Predictor:
    """Runs a runner on images with whole / sliding-window inference and writes the outputs."""

    def __init__(self, runner, output_dir: str | Path, mode: str = "whole", flip: bool = False, stride: float = 2 / 3,
                 scales=(1.0,), overlay: bool = False, alpha: float = 0.5, video_frames: bool = False, max_frames: int | None = None,
                 fourcc: str = "mp4v", progress: bool = False, resize: dict | None = None, resume: bool = False,
                 queue_depth: int = 4):
        if not (0.0 <= alpha <= 1.0):
            raise UserError(f"--alpha must be between 0 and 1, got {alpha}")
        if max_frames is not None and max_frames <= 0:
            raise UserError(f"--max-frames must be positive, got {max_frames}")
        self.runner = runner
        self.out = Path(output_dir)
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{self.out}: output exists and is not a folder; choose an output folder")
        self.predict = make_predictor(mode=mode, flip=flip, stride=stride, scales=scales, resize=resize)
        self.overlay = overlay
        self.alpha = alpha
        self.video_frames = video_frames
        self.max_frames = max_frames
        self.fourcc = fourcc
        self.progress = progress
        self.resume = resume
        if int(queue_depth) < 1:
            raise UserError(f"queue depth must be at least 1, got {queue_depth}")
        self.queue_depth = int(queue_depth)
        # whole image, one scale, no flip: one model call on the prepared image, labels_at after
        self.fast = mode == "whole" and not flip and tuple(float(v) for v in scales) == (1.0,)
        self.lut = palette_array(runner.palette, runner.num_classes)
        self.result = PredictResult()

    def _write_png(self, path: Path, array: np.ndarray) -> None:
        write_png_atomic(path, array)
        self.result.files.append(str(path))

    def segment(self, image_rgb: np.ndarray) -> np.ndarray:
        return self.predict(self.runner, ensure_rgb(image_rgb))

    def image_outputs(self, item: Item) -> list[Path]:
        """The files an image gives (labels, colour, overlay with ``overlay``)."""
        kinds = ("labels", "color") + (("overlay",) if self.overlay else ())
        return [self.out / k / f"{item.name}.png" for k in kinds]

    def image(self, item: Item) -> None:
        img = read_image(item.path)
        self._write_image(item, img, self.segment(img))

    def _write_image(self, item: Item, img: np.ndarray, labels: np.ndarray) -> None:
        color = colorize(labels, self.lut)
        self._write_png(self.out / "labels" / f"{item.name}.png", label_image(labels, self.runner.num_classes))
        self._write_png(self.out / "color" / f"{item.name}.png", color)
        if self.overlay:
            self._write_png(self.out / "overlay" / f"{item.name}.png", overlay(img, color, self.alpha))
        self.result.images += 1

    def _read(self, item: Item):
        img = ensure_rgb(read_image(item.path))
        return img, (self.runner.prepare(img) if self.fast else None)

    def _infer(self, img: np.ndarray, x) -> np.ndarray:
        if x is None:
            return self.predict(self.runner, img)
        from .evaluate import labels_at

        return labels_at(self.runner.infer_items([x], batch=1)[0], img.shape[:2])

    def images_pipelined(self, items: list[Item]) -> None:
        """Decode + prepare (reader thread) | inference (this thread) | colour + write (writer
        thread), bounded queues between them, written in input order; the first error stops all
        three and is raised here."""
        if not items:
            return
        read_q: queue.Queue = queue.Queue(self.queue_depth)
        write_q: queue.Queue = queue.Queue(self.queue_depth)
        stop = threading.Event()
        errors: list[BaseException] = []
        END = object()

        def put(q, v) -> bool:
            while not stop.is_set():
                try:
                    q.put(v, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader():
            try:
                for it in items:
                    if stop.is_set() or not put(read_q, (it,) + self._read(it)):
                        return
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                errors.append(e)
                stop.set()
            finally:
                put(read_q, END)

        def writer():
            try:
                while True:
                    v = write_q.get()
                    if v is END:
                        return
                    self._write_image(*v)
                    if self.progress and self.result.images % 50 == 0:
                        print(f"{self.result.images}/{len(items)} images", file=sys.stderr)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                stop.set()

        threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
        for t in threads:
            t.start()
        try:
            while not stop.is_set():
                try:
                    v = read_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if v is END:
                    break
                it, img, x = v
                if not put(write_q, (it, img, self._infer(img, x))):
                    break
        except BaseException:
            stop.set()
            raise
        finally:
            while True:  # the writer finishes what it has, then ends
                try:
                    write_q.put(END, timeout=0.1)
                    break
                except queue.Full:
                    if not threads[1].is_alive():
                        break
            for t in threads:
                t.join()
        if errors:
            raise errors[0]

    def _frames(self, cap, path: Path) -> Iterator[np.ndarray]:
        n = 0
        while self.max_frames is None or n < self.max_frames:
            with native_stderr_captured():
                ok, frame = cap.read()
            if not ok or frame is None:
                break
            n += 1
            yield ensure_rgb(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 and frame.shape[2] == 3
                             else frame, what=str(path))

    def video(self, item: Item) -> None:
        path = item.path
        with native_stderr_captured():  # FFmpeg's own complaints about the file: we say it in one line
            cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise UserError(f"{path}: cannot open video (corrupt, or a codec OpenCV cannot read); convert it, e.g. "
                                f"ffmpeg -i {path.name} out.mp4, or extract frames as images")
            fps = cap.get(cv2.CAP_PROP_FPS)
            fps = fps if fps and np.isfinite(fps) and 0 < fps < 1000 else 25.0
            frames = self._frames(cap, path)
            first = next(frames, None)
            if first is None:
                raise UserError(f"{path}: video has no readable frames (corrupt or unsupported codec)")
            h, w = first.shape[:2]
            vdir = self.out / "video"
            outs = {"color": vdir / f"{item.name}.color.mp4"}
            if self.overlay:
                outs["overlay"] = vdir / f"{item.name}.overlay.mp4"
            with _VideoWriters(outs, fps, (w, h), self.fourcc) as writers:
                count = 0
                for frame in _chain(first, frames):
                    if frame.shape[:2] != (h, w):
                        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
                    labels = self.segment(frame)
                    color = colorize(labels, self.lut)
                    writers.write("color", color)
                    if self.overlay:
                        writers.write("overlay", overlay(frame, color, self.alpha))
                    if self.video_frames:
                        self._write_png(self.out / "labels" / item.name / f"{count:06d}.png",
                                        label_image(labels, self.runner.num_classes))
                    count += 1
                    if self.progress and count % 50 == 0:
                        print(f"{path.name}: {count} frames", file=sys.stderr)
            self.result.files += [str(p) for p in outs.values()]
            self.result.frames += count
            self.result.videos += 1
        finally:
            cap.release()

    def run(self, inputs: list[str | Path]) -> PredictResult:
        items = collect_inputs(inputs, exclude=self.out)
        with output_dir(self.out):  # a run that fails before writing anything leaves no empty folders
            run: list[Item] = []  # consecutive images go through the pipeline together, in input order
            for item in items + [None]:
                if item is not None and item.kind == "image":
                    if self.resume and all(p.is_file() for p in self.image_outputs(item)):
                        self.result.skipped += 1
                    else:
                        run.append(item)
                    continue
                self.images_pipelined(run)
                run = []
                if item is not None:
                    self.video(item)
        return self.result


def _chain(first, rest):
    yield first
    yield from rest


class _VideoWriters:
    """OpenCV writers into temporary files, renamed onto their targets only when all frames are in."""

    def __init__(self, targets: dict[str, Path], fps: float, size: tuple[int, int], fourcc: str):
        self.targets, self.fps, self.size, self.fourcc = targets, fps, size, fourcc
        self._ctx = {}
        self._writers = {}

    def __enter__(self):
        try:
            for key, path in self.targets.items():
                ctx = atomic_path(path, suffix=path.suffix)
                tmp = ctx.__enter__()
                self._ctx[key] = ctx
                w = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
                if not w.isOpened():
                    raise UserError(f"{path}: OpenCV cannot write {self.fourcc!r} video here; try another --output "
                                    f"or install an OpenCV build with FFmpeg")
                self._writers[key] = w
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def write(self, key: str, rgb: np.ndarray) -> None:
        self._writers[key].write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def __exit__(self, exc_type, exc, tb):
        for w in self._writers.values():
            w.release()
        self._writers = {}
        for ctx in self._ctx.values():
            ctx.__exit__(exc_type, exc, tb)
        self._ctx = {}
        return False


def predict(model, inputs: list[str | Path], output_dir: str | Path, device: str = "cpu", **kwargs) -> dict:
    """Segment ``inputs`` with ``model`` (a path or a runner); returns counts and the files written."""
    from .runners import load_runner

    if not isinstance(model, (str, Path)):
        return Predictor(model, output_dir, **kwargs).run(inputs).to_dict()
    with load_runner(model, device=device) as runner:
        return Predictor(runner, output_dir, **kwargs).run(inputs).to_dict()
