"""A training-curve PNG drawn with Pillow (no plotting library needed): training loss per logged update and
the validation metric per validation, each on its own panel."""
from typing import List, Tuple

from PIL import Image, ImageDraw

Series = List[Tuple[float, float]]
WIDTH, PANEL, MARGIN = 720, 240, 56


def _panel(draw: ImageDraw.ImageDraw, top: int, series: Series, title: str, colour: str, x_max: float) -> None:
    left, right, bottom = MARGIN, WIDTH - 20, top + PANEL - 36
    draw.rectangle([left, top + 20, right, bottom], outline="black")
    draw.text((left, top + 4), title, fill="black")
    if not series:
        draw.text((left + 10, top + 40), "(no points)", fill="gray")
        return
    ys = [y for _, y in series]
    low, high = min(ys), max(ys)
    if high - low < 1e-9:
        low, high = low - 1, high + 1

    def point(x, y):
        return (left + (right - left) * x / max(x_max, 1e-9), bottom - (bottom - top - 20) * (y - low) / (high - low))

    if len(series) > 1:
        draw.line([point(x, y) for x, y in series], fill=colour, width=2)
    px, py = point(*series[-1])
    draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    draw.text((4, top + 20), f"{high:.3g}", fill="black")
    draw.text((4, bottom - 10), f"{low:.3g}", fill="black")
    draw.text((left, bottom + 4), "0", fill="black")
    draw.text((right - 60, bottom + 4), f"{x_max:.0f} updates", fill="black")


def training_curve(path: str, losses: Series, metric: Series, metric_name: str) -> str:
    """Write the two-panel curve (x: update number) to `path`."""
    x_max = max([x for x, _ in losses + metric] or [1])
    image = Image.new("RGB", (WIDTH, 2 * PANEL), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, 0, losses, "training loss", "#1f77b4", x_max)
    _panel(draw, PANEL, metric, f"validation {metric_name}", "#d62728", x_max)
    image.save(path)
    return path
