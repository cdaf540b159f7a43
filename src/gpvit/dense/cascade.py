"""Cascade Mask R-CNN (Cai & Vasconcelos, 2018) on torchvision's detection parts.

torchvision has no cascade detector; this one reuses its RPN, ``BoxCoder``, ``Matcher``, sampler, mask heads,
mask loss and post-processing, and adds the cascade: three box stages, each trained on the boxes the previous
stage refined, with a rising IoU threshold. The settings are mmdetection's public Cascade Mask R-CNN 3x
settings (the GC ViT and Swin detection recipes):

* stage ``i`` matches its proposals to the ground truth at IoU 0.5 / 0.6 / 0.7 (positive at or above, negative
  below: one threshold), samples 512 RoIs per image with at most 25 % positives (the ground-truth boxes join
  the proposals), and weighs its losses 1 / 0.5 / 0.25;
* box regression is class-specific, with per-stage target stds (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1),
  (0.033, 0.033, 0.067, 0.067) (torchvision's ``BoxCoder`` weights are their inverses); the loss is GIoU on
  the decoded boxes (weight 10, summed over positives and divided by the number of sampled RoIs);
* between stages every RoI is moved by its regression for its class (the target class for positive RoIs, the
  predicted foreground class for the others), clipped to the image, without gradient; the ground-truth
  boxes added as proposals leave the refined set (the next stage adds them again);
* at test time the class logits of the three stages are averaged (mmdet averages the raw scores, then takes
  the softmax), the boxes are the last stage's regression of the twice-refined proposals, and torchvision's
  post-processing (score threshold, per-class NMS, detections per image) follows;
* every stage has a mask head of its own (mmdet replicates one mask-head config per stage), trained on that
  stage's positive RoIs; at test time the three heads run on the final boxes and their mask probabilities are
  averaged.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss

__all__ = ['CascadeStage', 'CascadeRoIHeads', 'refine_boxes', 'DEFAULT_STAGE_IOUS', 'DEFAULT_STAGE_WEIGHTS',
           'DEFAULT_STAGE_STDS']

DEFAULT_STAGE_IOUS = (0.5, 0.6, 0.7)
DEFAULT_STAGE_WEIGHTS = (1.0, 0.5, 0.25)
DEFAULT_STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


class CascadeStage(nn.Module):
    """One cascade stage: box head and predictor, mask head and predictor, and the stage's matching and coding.

    Args:
        box_head: RoI features ``(K, C, 7, 7)`` -> ``(K, D)``.
        box_predictor: ``(K, D)`` -> class logits ``(K, num_classes)``, deltas ``(K, 4 * num_classes)``.
        iou: the stage's IoU threshold (positive at or above, negative below).
        stds: the regression target stds (x, y, w, h); the ``BoxCoder`` weights are their inverses.
        loss_weight: the weight of the stage's losses.
        mask_head / mask_predictor: RoI features ``(K, C, 14, 14)`` -> mask logits ``(K, num_classes, 28, 28)``.
    """

    def __init__(self, box_head: nn.Module, box_predictor: nn.Module, iou: float, stds: Sequence[float],
                 loss_weight: float, mask_head: Optional[nn.Module] = None,
                 mask_predictor: Optional[nn.Module] = None):
        super().__init__()
        if not 0 < iou < 1:
            raise ValueError(f'stage IoU threshold {iou} must be in (0, 1)')
        if len(stds) != 4 or min(stds) <= 0:
            raise ValueError(f'stage target stds {tuple(stds)} must be 4 positive numbers')
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.iou = float(iou)
        self.loss_weight = float(loss_weight)
        self.stds = tuple(float(s) for s in stds)
        self.matcher = det_utils.Matcher(iou, iou, allow_low_quality_matches=False)
        self.box_coder = det_utils.BoxCoder(tuple(1.0 / s for s in self.stds))

    def forward(self, box_features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(K, num_classes)`` and deltas ``(K, 4 * num_classes)`` of RoI features."""
        return self.box_predictor(self.box_head(box_features))

    def mask_logits(self, mask_features: torch.Tensor) -> torch.Tensor:
        return self.mask_predictor(self.mask_head(mask_features))


def refine_boxes(box_coder: det_utils.BoxCoder, boxes: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                 image_shape: Tuple[int, int]) -> torch.Tensor:
    """Each box ``(K, 4)`` moved by its regression for class ``labels`` ``(K,)`` (deltas ``(K, 4 * classes)``),
    clipped to ``image_shape`` ``(H, W)``: mmdet's ``regress_by_class``. Computed in the boxes' dtype (under
    autocast the deltas may be half precision, which cannot hold pixel coordinates of large images exactly)."""
    deltas = deltas.reshape(deltas.shape[0], -1, 4)[torch.arange(deltas.shape[0], device=deltas.device), labels]
    deltas = deltas.to(boxes.dtype)
    return box_ops.clip_boxes_to_image(box_coder.decode_single(deltas, boxes), image_shape)


def _foreground_argmax(class_logits: torch.Tensor) -> torch.Tensor:
    """The most likely foreground class of each RoI (label 0 is the background)."""
    return class_logits[:, 1:].argmax(dim=1) + 1


class CascadeRoIHeads(RoIHeads):
    """The cascade's RoI heads; a drop-in for torchvision's ``RoIHeads`` inside ``GeneralizedRCNN``.

    ``forward(features, proposals, image_shapes, targets)`` returns ``(detections, losses)`` as torchvision's:
    per image ``boxes`` ``(N, 4)``, ``labels`` ``(N,)``, ``scores`` ``(N,)``, ``masks`` ``(N, 1, 28, 28)``
    (probabilities, pasted into the image by the transform); losses ``loss_classifier_s{i}``,
    ``loss_box_reg_s{i}`` (GIoU), ``loss_mask_s{i}``, already weighted by the stage weights.

    Args:
        box_roi_pool / mask_roi_pool: RoI feature extractors shared by all stages.
        stages: the :class:`CascadeStage` s, first to last.
        batch_size_per_image / positive_fraction: RoI sampling of every stage.
        score_thresh / nms_thresh / detections_per_img: test-time post-processing.
        giou_weight: weight of the GIoU box loss.
    """

    def __init__(self, box_roi_pool: nn.Module, stages: Sequence[CascadeStage], batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, mask_roi_pool: Optional[nn.Module] = None,
                 giou_weight: float = 10.0):
        if len(stages) < 1:
            raise ValueError('a cascade needs at least one stage')
        with_masks = mask_roi_pool is not None
        if any((s.mask_head is not None) != with_masks for s in stages):
            raise ValueError('with a mask_roi_pool every stage needs a mask head, without one none may have it')
        last = stages[-1]
        # The parent keeps the RoI sampler (shared by the stages), a matcher that goes unused (each stage has its
        # own) and the box coder its postprocess_detections decodes with: the last stage's. The heads live in
        # `stages`, so the parent gets none.
        super().__init__(box_roi_pool, None, None, stages[0].iou, stages[0].iou, batch_size_per_image,
                         positive_fraction, tuple(1.0 / s for s in last.stds), score_thresh, nms_thresh,
                         detections_per_img, mask_roi_pool=mask_roi_pool)
        self.stages = nn.ModuleList(stages)
        self.giou_weight = float(giou_weight)

    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None

    # -- training ----------------------------------------------------------------------------------------------

    def sample(self, stage: CascadeStage, proposals: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]]
               ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Per image: the sampled RoIs ``(S, 4)`` (ground truth added to the proposals), their labels ``(S,)``
        (0 = background), matched ground-truth indices ``(S,)`` and whether each RoI is a ground-truth box."""
        rois, labels, matched, is_gt = [], [], [], []
        for boxes, target in zip(proposals, targets):
            gt = target['boxes'].to(boxes.dtype)
            candidates = torch.cat([boxes, gt])
            gt_flag = torch.arange(candidates.shape[0], device=boxes.device) >= boxes.shape[0]
            if gt.numel() == 0:
                idx = torch.zeros(candidates.shape[0], dtype=torch.int64, device=boxes.device)
                lab = torch.zeros_like(idx)
            else:
                m = stage.matcher(box_ops.box_iou(gt, candidates))
                idx = m.clamp(min=0)
                lab = target['labels'][idx].to(torch.int64)
                lab[m < 0] = 0  # one threshold: every unmatched RoI is background
            rois.append(candidates)
            labels.append(lab)
            matched.append(idx)
            is_gt.append(gt_flag)
        pos, neg = self.fg_bg_sampler(labels)
        keep = [torch.nonzero(p | n).squeeze(1) for p, n in zip(pos, neg)]
        return ([r[k] for r, k in zip(rois, keep)], [lab[k] for lab, k in zip(labels, keep)],
                [m[k] for m, k in zip(matched, keep)], [g[k] for g, k in zip(is_gt, keep)])

    def box_loss(self, stage: CascadeStage, class_logits: torch.Tensor, deltas: torch.Tensor,
                 rois: List[torch.Tensor], labels: List[torch.Tensor], matched: List[torch.Tensor],
                 targets: List[Dict[str, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cross entropy over the sampled RoIs; GIoU of the decoded boxes of the positives against their
        ground truth, summed and divided by the number of sampled RoIs (mmdet's ``avg_factor``). The boxes are
        decoded and compared in the RoIs' dtype (float32): box areas overflow float16."""
        label = torch.cat(labels)
        loss_cls = F.cross_entropy(class_logits, label)
        pos = torch.nonzero(label > 0).squeeze(1)
        if pos.numel() == 0:
            return loss_cls, deltas.sum() * 0
        gt = torch.cat([t['boxes'][m] if t['boxes'].numel() else t['boxes'].new_zeros(m.shape[0], 4)
                        for t, m in zip(targets, matched)])
        rois_pos = torch.cat(rois)[pos]
        d = deltas.reshape(deltas.shape[0], -1, 4)[pos, label[pos]].to(rois_pos.dtype)
        pred = stage.box_coder.decode_single(d, rois_pos)
        loss_box = generalized_box_iou_loss(pred, gt[pos].to(pred.dtype), reduction='sum') / label.numel()
        return loss_cls, loss_box * self.giou_weight

    def mask_loss(self, stage: CascadeStage, features: Dict[str, torch.Tensor], rois: List[torch.Tensor],
                  labels: List[torch.Tensor], matched: List[torch.Tensor], image_shapes: List[Tuple[int, int]],
                  targets: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
        pos = [torch.nonzero(lab > 0).squeeze(1) for lab in labels]
        boxes = [r[p] for r, p in zip(rois, pos)]
        logits = stage.mask_logits(self.mask_roi_pool(features, boxes, image_shapes))
        return maskrcnn_loss(logits, boxes, [t['masks'] for t in targets], [t['labels'] for t in targets],
                             [m[p] for m, p in zip(matched, pos)])

    # -- forward -----------------------------------------------------------------------------------------------

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],  # type: ignore[override]
                image_shapes: List[Tuple[int, int]], targets: Optional[List[Dict[str, torch.Tensor]]] = None
                ) -> Tuple[List[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]:
        # Under autocast torchvision's RPN decodes its proposals in half precision; the cascade refines boxes
        # three times and compares them with the ground truth (GIoU, box areas beyond float16's range), so it
        # works on float32 (or wider) boxes; the RoI features stay in autocast's precision.
        proposals = [p.to(torch.promote_types(p.dtype, torch.float32)) for p in proposals]
        if self.training:
            if targets is None:
                raise ValueError('CascadeRoIHeads needs targets in training mode')
            self.check_targets(targets)
            if self.has_mask() and any('masks' not in t for t in targets):
                raise ValueError("training a Cascade Mask R-CNN needs 'masks' in every target")
            return [], self._train_forward(features, proposals, image_shapes, targets)
        return self._test_forward(features, proposals, image_shapes), {}

    def _train_forward(self, features, proposals, image_shapes, targets) -> Dict[str, torch.Tensor]:
        losses: Dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            rois, labels, matched, is_gt = self.sample(stage, proposals, targets)
            class_logits, deltas = stage(self.box_roi_pool(features, rois, image_shapes))
            loss_cls, loss_box = self.box_loss(stage, class_logits, deltas, rois, labels, matched, targets)
            losses[f'loss_classifier_s{i}'] = loss_cls * stage.loss_weight
            losses[f'loss_box_reg_s{i}'] = loss_box * stage.loss_weight
            if self.has_mask():
                losses[f'loss_mask_s{i}'] = stage.loss_weight * self.mask_loss(
                    stage, features, rois, labels, matched, image_shapes, targets)
            if i + 1 < len(self.stages):
                with torch.no_grad():
                    n = [r.shape[0] for r in rois]
                    label = torch.cat(labels)
                    label = torch.where(label > 0, label, _foreground_argmax(class_logits))
                    proposals = [refine_boxes(stage.box_coder, r, d, lab, shape)[~g] for r, d, lab, shape, g in
                                 zip(rois, deltas.split(n), label.split(n), image_shapes, is_gt)]
        return losses

    def _test_forward(self, features, proposals, image_shapes) -> List[Dict[str, torch.Tensor]]:
        n = [p.shape[0] for p in proposals]
        logits = []
        for i, stage in enumerate(self.stages):
            class_logits, deltas = stage(self.box_roi_pool(features, proposals, image_shapes))
            logits.append(class_logits)
            if i + 1 < len(self.stages):
                proposals = [refine_boxes(stage.box_coder, p, d, _foreground_argmax(c), shape) for p, d, c, shape
                             in zip(proposals, deltas.split(n), class_logits.split(n), image_shapes)]
        # the last stage's regression of its RoIs, scored by the mean of the stages' logits
        dtype = proposals[0].dtype  # decoded in the proposals' precision, not autocast's half precision
        boxes, scores, labels = self.postprocess_detections(torch.stack(logits).to(dtype).mean(0), deltas.to(dtype),
                                                            proposals, image_shapes)
        result = [{'boxes': b, 'labels': lab, 'scores': s} for b, lab, s in zip(boxes, labels, scores)]
        if self.has_mask():
            mask_features = self.mask_roi_pool(features, boxes, image_shapes)
            probs = torch.stack([stage.mask_logits(mask_features).sigmoid() for stage in self.stages]).mean(0)
            label = torch.cat(labels)
            masks = probs[torch.arange(label.shape[0], device=label.device), label][:, None]
            for r, m in zip(result, masks.split([b.shape[0] for b in boxes])):
                r['masks'] = m
        return result
