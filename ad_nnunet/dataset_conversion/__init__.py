"""Building raw datasets offline (nnU-Net's ``dataset_conversion``): the phantom, domain-shift datasets and the
benchmark datasets. Training never imports this package."""
