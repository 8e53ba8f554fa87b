"""napari contributions (reader, sample data, widgets). The only place that imports napari."""
