"""The data layer: label files, Esri metadata, chip export, prepare_data and augmentations."""
