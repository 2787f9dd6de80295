"""dmd2 worker: hosts DMD2 roles (teacher, generator, fake score, discriminator) behind the dmd2 protocol."""
__version__ = "0.1.0"
