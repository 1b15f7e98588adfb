"""Exporting masks: COCO annotations (RLE / polygons) and coloured overlays."""
