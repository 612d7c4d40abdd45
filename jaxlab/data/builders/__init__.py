"""jaxlab's own TFDS builders; importing this module registers them with tfds."""
from jaxlab.data.builders.digits import Digits
from jaxlab.data.builders.mnist5k import Mnist5k
from jaxlab.data.builders.shakespeare import Shakespeare

BUILDERS = {b.name: b for b in (Mnist5k, Digits, Shakespeare)}

__all__ = ['BUILDERS', 'Digits', 'Mnist5k', 'Shakespeare']
