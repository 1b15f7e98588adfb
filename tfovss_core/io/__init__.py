"""Reading images as FiftyOne and the official cv2/mmcv pipelines show them; writing masks."""
