"""Box overlap for visual grounding (Acc@0.5): shared by the `refcoco` task and the `box_accuracy` scorer."""
import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two `[N, 4]` (x0, y0, x1, y1) box tensors; 0 where both boxes are empty."""
    low = torch.max(a[:, :2], b[:, :2])
    high = torch.min(a[:, 2:], b[:, 2:])
    inter = (high - low).clamp(min=0).prod(1)
    area = lambda box: (box[:, 2:] - box[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))
