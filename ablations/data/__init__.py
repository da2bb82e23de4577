"""data: images in — the datasets read from their files, split, held on the device and batched."""
