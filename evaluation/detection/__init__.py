"""Detection transfer with Detectron2 (optional extra: ``scripts/install_detectron2.sh``).

``convert``: a ResNet backbone to a Detectron2 weights pickle (needs only numpy/torch).
``train``: Faster R-CNN R50-C4 on VOC07+12 and Mask R-CNN R50-FPN on COCO (``configs/``), results as JSON.
"""
