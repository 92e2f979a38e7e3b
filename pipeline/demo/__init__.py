"""The demo data sets: handwritten digits as images, and fraud-shaped card transactions one day at a time."""
