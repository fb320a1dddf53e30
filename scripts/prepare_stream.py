"""Write an image folder, an array file or a torchvision dataset as a stream (the ``ae-lightning-prepare`` command).

python scripts/prepare_stream.py photos/ data/photos-64 --size 64
"""

from datamodules.stream_prepare import main

if __name__ == "__main__":
    main()
