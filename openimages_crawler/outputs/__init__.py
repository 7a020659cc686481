"""Labels for detection trainers: COCO, YOLO and Pascal VOC files for the
images a store holds, with the store's boxes moved into each stored image.

Reads the store (results, annotation files, class descriptions, the images'
own provenance EXIF), never the network; no Scrapy import.
"""

EXPORT_FORMATS = ("coco", "yolo", "voc")
