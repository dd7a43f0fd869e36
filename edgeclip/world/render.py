"""Scenes to pixels with OpenCV: anti-aliased shapes on a patterned background, then light, blur, noise and JPEG.

Everything works in uint8 through lookup tables where it can: a trainer on two cores needs thousands of images a
minute. The random generator only adds the background's detail (noise, grain, clutter strokes, region edges) and sensor
noise; everything else is in the scene.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import cv2
import numpy as np
import numpy.typing as npt

from edgeclip.world.scene import Lighting, Obj, Occluder, Scene

Image = npt.NDArray[np.uint8]
SHIFT = 4  # OpenCV fixed-point bits of the drawing coordinates: 1/16 pixel, so small shapes keep their form
ONE = 1 << SHIFT


def _circle(radius: float, n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius  # (n, 2)


def _regular(n: int, radius: float, start_deg: float = -90.0) -> np.ndarray:
    t = np.radians(start_deg) + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius  # (n, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # image y points down
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(axis=0) + pts.min(axis=0)) / 2  # center the bounding box
    return pts / np.linalg.norm(pts, axis=1).max()  # (120, 2)


@cache
def unit_contours(shape: str) -> tuple[np.ndarray, ...]:
    """The contours of a shape of circumradius <= 1 around (0, 0), image axes (y down); a ring has a hole.

    Sizes are balanced by eye so shapes of one size word look about as big as each other.
    """
    if shape == "circle":
        return (_circle(0.92),)
    if shape == "ring":
        return (_circle(0.95), _circle(0.55)[::-1])
    if shape == "square":
        return (_regular(4, 0.99, 45.0),)
    if shape == "triangle":
        return (_regular(3, 1.0),)
    if shape == "hexagon":
        return (_regular(6, 0.97, 0.0),)
    if shape == "star":
        outer, inner = _regular(5, 1.0), _regular(5, 0.45, -90.0 + 36.0)
        return (np.stack([outer, inner], axis=1).reshape(10, 2),)
    if shape == "cross":
        a, b = 0.95, 0.31  # arm half-length and half-width: corners at radius 1.0
        arm = [(b, -a), (b, -b), (a, -b)]  # one arm's outline; the other three are its quarter turns
        pts = [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1)) for x, y in arm]
        return (np.array(pts, dtype=np.float64),)
    if shape == "heart":
        return (_heart(),)
    raise KeyError(shape)


def object_contours(obj: Obj) -> list[np.ndarray]:
    """The object's contours in OpenCV fixed point (int32, SHIFT bits), ready for cv2.fillPoly."""
    t = np.radians(obj.angle)
    # Counter-clockwise on screen, where y points down.
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return [
        np.round((c @ rot.T * obj.radius + (obj.x, obj.y)) * ONE).astype(np.int32) for c in unit_contours(obj.shape)
    ]


@cache
def _dense_unit_contours(shape: str, n: int = 96) -> tuple[np.ndarray, ...]:
    """The unit contours with points spread along every edge (a wobble or a perspective needs them), corners kept."""
    out = []
    for c in unit_contours(shape):
        closed = np.vstack([c, c[:1]])
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
        t = np.union1d(np.linspace(0.0, cum[-1], n, endpoint=False), cum[:-1])
        out.append(np.stack([np.interp(t, cum, closed[:, 0]), np.interp(t, cum, closed[:, 1])], axis=1))
    return tuple(out)


def styled_contours(obj: Obj) -> list[np.ndarray]:
    """`object_contours` for any object: a styled one is wobbled, stretched, sheared and tilted first."""
    style = obj.style
    if style is None:
        return object_contours(obj)
    tx, ty = style.tilt
    contours = []
    for c in _dense_unit_contours(obj.shape):
        x, y = c[:, 0].copy(), c[:, 1].copy()
        if style.wobble:
            k = 1 + style.wobble * np.sin(style.wobble_freq * np.arctan2(y, x) + style.wobble_phase)
            x, y = x * k, y * k
        x, y = x * style.stretch, y / style.stretch
        x = x + style.shear * y
        d = 1 + tx * x + ty * y
        contours.append(np.stack([x / d, y / d], axis=1))
    # The same circumradius as the plain shape, so the size words keep their meaning.
    reach = max(float(np.linalg.norm(c, axis=1).max()) for c in contours)
    plain = max(float(np.linalg.norm(c, axis=1).max()) for c in unit_contours(obj.shape))
    t = np.radians(obj.angle)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    scale = obj.radius * plain / reach
    return [np.round((c @ rot.T * scale + (obj.x, obj.y)) * ONE).astype(np.int32) for c in contours]


def _draw_mask(canvas: np.ndarray, obj: Obj, line: int) -> None:
    """Draw the object's coverage into a uint8 canvas: its outline stroke or its filled contours."""
    contours = styled_contours(obj)
    if obj.style is not None and obj.style.fill == "outline":
        width = max(1, round(obj.style.stroke * obj.radius))
        cv2.polylines(canvas, contours, True, 255, width, line, SHIFT)
    else:
        cv2.fillPoly(canvas, contours, 255, line, SHIFT)


def _draw_styled(img: np.ndarray, obj: Obj, light: np.ndarray) -> None:
    """Composite a styled object onto img (in place) inside its bounding box."""
    assert obj.style is not None
    style = obj.style
    h, w = img.shape[:2]
    pad = obj.radius * (1.6 + style.stroke) + 2
    x0, y0 = max(0, int(obj.x - pad)), max(0, int(obj.y - pad))
    x1, y1 = min(w, int(obj.x + pad) + 1), min(h, int(obj.y + pad) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    moved = replace(obj, x=obj.x - x0, y=obj.y - y0)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _draw_mask(mask, moved, cv2.LINE_AA)
    a = np.array(_lit(light, obj.rgb), np.float32)
    fill: np.ndarray = a
    if style.fill in ("gradient", "texture"):
        b = np.array(_lit(light, style.rgb2), np.float32)
        coord = _coords(y1 - y0, x1 - x0, style.fill_angle)
        if style.fill == "gradient":
            lo, hi = float(coord.min()), float(coord.max())
            t = (coord - lo) / max(hi - lo, 1e-6)
        else:
            period = max(2.0, style.fill_scale * obj.radius)
            t = np.clip(np.cos(coord * np.float32(2 * np.pi / period)) * 2 + 0.5, 0, 1)
        fill = a + (b - a) * t[..., None]  # (h, w, 3)
    m = mask.astype(np.float32)[..., None] / 255.0
    roi = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(roi + (fill - roi) * m + 0.5, 0, 255).astype(np.uint8)


def occluder_contour(occ: Occluder) -> np.ndarray:
    t = np.radians(occ.angle)
    u, v = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    hl, hw = occ.length / 2, occ.width / 2
    corners = [(occ.x, occ.y) + su * hl * u + sv * hw * v for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    return np.round(np.array(corners) * ONE).astype(np.int32)


def _coords(height: int, width: int, angle_deg: float) -> np.ndarray:
    """Pixel coordinate along direction `angle_deg`: (H, W) float32."""
    t = np.radians(angle_deg)
    ys = np.arange(height, dtype=np.float32) * np.float32(np.sin(t))
    xs = np.arange(width, dtype=np.float32) * np.float32(np.cos(t))
    return np.add.outer(ys, xs)  # (H, W)


def _to_u8(field: np.ndarray) -> np.ndarray:
    """Stretch a float field to the full 0..255 range."""
    lo, hi = float(field.min()), float(field.max())
    return cv2.convertScaleAbs(field, alpha=255.0 / max(hi - lo, 1e-6), beta=-lo * 255.0 / max(hi - lo, 1e-6))


def background_field(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """How much of bg_colors[1] each pixel takes: (H, W) uint8, 0 = bg_colors[0]."""
    h, w = scene.height, scene.width
    if scene.background == "plain":
        return np.zeros((h, w), np.uint8)
    if scene.background == "gradient":
        return _to_u8(_coords(h, w, scene.bg_angle))
    if scene.background == "noise":
        # Smooth clouds: a coarse random grid, upsampled.
        cells = max(2, int(scene.bg_scale))
        gh, gw = (cells, max(2, cells * w // h)) if h >= w else (max(2, cells * h // w), cells)
        grid = rng.random((gh, gw), dtype=np.float32)
        return _to_u8(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC))
    if scene.background in ("octaves", "clutter"):
        # Noise at several scales: cells, then cells 2x, 4x, 8x finer at half the weight each.
        total = np.zeros((h, w), np.float32)
        cells = max(2, int(scene.bg_scale))
        for octave in range(4):
            n = cells << octave
            grid = rng.random((max(2, n * h // max(h, w)), max(2, n * w // max(h, w))), dtype=np.float32)
            total += cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32(0.5**octave)
        field8 = _to_u8(total)
        if scene.background == "clutter":
            # Strokes and scribbles in the background's own two colors (so every object keeps its contrast); never
            # closed shapes, which could pass for one of the named ones.
            for _ in range(int(rng.integers(6, 20))):
                pts = np.cumsum(rng.normal(0, max(h, w) / 6, (int(rng.integers(2, 5)), 2)), axis=0)
                pts += rng.uniform(0, 1, 2) * (w, h)
                thick = int(rng.integers(1, max(2, min(h, w) // 40) + 1))
                value = int(rng.integers(0, 256))
                cv2.polylines(field8, [np.round(pts).astype(np.int32)], False, value, thick, cv2.LINE_AA)
        return field8
    if scene.background == "regions":
        return _regions(h, w, scene.bg_angle, scene.bg_scale, rng)
    pattern, period = scene.bg_pattern, max(scene.bg_scale, 2.0)
    if pattern == "grain":
        fine = rng.random((max(2, h // 2), max(2, w // 2)), dtype=np.float32)
        return _to_u8(cv2.resize(fine, (w, h), interpolation=cv2.INTER_LINEAR))
    k = np.float32(2 * np.pi / period)
    u = np.cos(_coords(h, w, scene.bg_angle) * k)
    if pattern == "stripes":
        return _to_u8(u)
    v = np.cos(_coords(h, w, scene.bg_angle + 90.0) * k)
    if pattern == "checker":
        # Soft-edged squares: the product of two waves, steepened and clipped.
        return _to_u8(np.clip(u * v * 3.0, -1.0, 1.0))
    return _to_u8(u + v)  # "weave": a grid of soft dots


def _regions(h: int, w: int, angle: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Flat areas parted by straight, hard edges: a table's edge, a wall's corner, a sheet of paper, planks, bands.

    Half the time the edges run parallel at `angle`, `scale` pixels apart on average (bands, planks, tiles seen edge
    on); otherwise one or two edges cross at random angles (never three, which could close a triangle). The areas
    alternate between a dark and a light share of the two colors across every edge, so each edge is as sharp as the
    background's contrast allows.
    """
    parallel = rng.random() < 0.5
    if parallel:
        coord = _coords(h, w, angle)
        lo, hi = float(coord.min()), float(coord.max())
        gap = max(scale, 4.0)
        offsets = lo - gap * float(rng.random()) + np.cumsum(rng.uniform(0.5, 1.5, int((hi - lo) / gap) + 2) * gap)
        cuts = [(angle, float(o)) for o in offsets if o < hi]
    else:
        cuts = [(float(rng.uniform(0, 180)), float(rng.uniform(0.15, 0.85))) for _ in range(int(rng.integers(1, 3)))]
    sign = np.ones((h, w), np.float32)  # (-1)^(edges crossed): the areas alternate across every edge
    for a, offset in cuts:
        coord = _coords(h, w, a)
        if not parallel:  # the edge somewhere across the middle of the frame, along its normal
            lo, hi = float(coord.min()), float(coord.max())
            offset = lo + (hi - lo) * offset
        beyond = np.clip(coord - np.float32(offset) + np.float32(0.5), 0.0, 1.0)  # one pixel of anti-aliasing
        sign *= 1.0 - 2.0 * beyond
    dark, light = rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)
    field = np.float32(light) + np.float32(dark - light) * (sign + 1.0) * np.float32(0.5)
    return np.clip(field * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _light_lut(light: Lighting) -> np.ndarray:
    """The lighting's per-channel map of 0..255: (256, 3) float64, not yet clipped."""
    v = np.arange(256, dtype=np.float64)[:, None]
    return ((v - 128.0) * light.contrast + 128.0 + light.brightness) * np.array(light.gain)  # (256, 3)


def _lit(light: np.ndarray, rgb: tuple[int, ...]) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(float(light[v, c])))) for c, v in enumerate(rgb))
    return r, g, b


def render(scene: Scene, rng: np.random.Generator) -> Image:
    """The scene as an (H, W, 3) uint8 RGB image."""
    h, w = scene.height, scene.width
    # The lighting is a per-channel map of values, so it is applied to the colors before drawing rather than to
    # every pixel after: the same picture (blending commutes with an affine map) for a fraction of the cost.
    light = _light_lut(scene.lighting)
    c0, c1 = (_lit(light, c) for c in scene.bg_colors)
    if scene.background == "plain":
        img = cv2.resize(np.array([[c0]], np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    else:
        t = np.arange(256, dtype=np.float64)[:, None] / 255.0
        mix = np.round(np.array(c0, np.float64) * (1 - t) + np.array(c1, np.float64) * t).astype(np.uint8)
        field = background_field(scene, rng)
        # Three single-channel lookups and a merge: a third of the cost of np.take over (H, W, 3).
        img = cv2.merge([cv2.LUT(field, np.ascontiguousarray(mix[:, c])) for c in range(3)])
    for obj in scene.objects:
        if obj.style is None:
            cv2.fillPoly(img, object_contours(obj), _lit(light, obj.rgb), cv2.LINE_AA, SHIFT)
        else:
            _draw_styled(img, obj, light)
    if scene.occluder is not None:
        g = scene.occluder.gray
        cv2.fillPoly(img, [occluder_contour(scene.occluder)], _lit(light, (g, g, g)), cv2.LINE_AA, SHIFT)
    falloff = scene.lighting.falloff
    if falloff > 0:
        # The ramp in 1/128 steps, as uint8: an integer multiply, no float image.
        ramp = _coords(h, w, scene.lighting.falloff_angle)
        lo, hi = float(ramp.min()), float(ramp.max())
        ramp = (ramp - lo) * np.float32(128 * falloff / max(hi - lo, 1e-6)) + np.float32(128 * (1 - falloff / 2))
        ramp8 = cv2.convertScaleAbs(ramp)
        img = cv2.multiply(img, cv2.merge([ramp8, ramp8, ramp8]), scale=1 / 128)
    if scene.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), scene.blur)
    if scene.motion > 0:
        size = max(3, int(scene.motion) | 1)
        kernel = np.zeros((size, size), np.float32)
        dx, dy = np.cos(np.radians(scene.motion_angle)) * size / 2, np.sin(np.radians(scene.motion_angle)) * size / 2
        c = size / 2 - 0.5
        cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
        img = cv2.filter2D(img, -1, kernel / max(float(kernel.sum()), 1e-6))
    if scene.downscale > 0:
        small = (max(8, round(w * scene.downscale)), max(8, round(h * scene.downscale)))
        img = cv2.resize(cv2.resize(img, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
    if scene.noise > 0:
        # Uniform luminance noise of std `noise`, the same on the three channels: what cheap sensors look like, at
        # a fraction of the cost of Gaussian noise per channel.
        a = max(1, round(scene.noise * 3**0.5))
        noise = rng.integers(-a, a + 1, (h, w), dtype=np.int16)
        img = cv2.add(img, cv2.merge([noise, noise, noise]), dtype=cv2.CV_8U)
    if scene.jpeg:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, scene.jpeg])
        if not ok:
            raise RuntimeError(f"OpenCV {cv2.__version__} could not encode a JPEG: install an OpenCV build with codecs")
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if decoded is None:
            raise RuntimeError(f"OpenCV {cv2.__version__} could not decode the JPEG it just encoded")
        img = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def visible_masks(scene: Scene) -> list[npt.NDArray[np.bool_]]:
    """Per object, the (H, W) bool mask of its pixels that nothing drawn later covers."""
    shape = (scene.height, scene.width)
    covers = [np.zeros(shape, np.uint8) for _ in scene.objects]
    for canvas, obj in zip(covers, scene.objects, strict=True):
        _draw_mask(canvas, obj, cv2.LINE_8)
    if scene.occluder is not None:
        occ = np.zeros(shape, np.uint8)
        cv2.fillPoly(occ, [occluder_contour(scene.occluder)], 255, cv2.LINE_8, SHIFT)
        covers.append(occ)
    masks = []
    for i in range(len(scene.objects)):
        visible = covers[i] > 0
        for later in covers[i + 1 :]:
            visible &= later == 0
        masks.append(visible)
    return masks
