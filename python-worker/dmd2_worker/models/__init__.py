"""Networks: the tiny UNet (teacher, generator, fake score) and the DMD2 discriminator head."""
