"""Example HGO plug-ins (docs/plugins.md): one of each kind, found through entry points.

* ``softmax`` (hgo.models): multinomial logistic regression in numpy;
* ``clipped-mean`` (hgo.rules): coordinate-wise mean after clipping around the median;
* ``blobs`` (hgo.datasets): Gaussian blobs, generated, no files;
* ``random-sign`` (hgo.attacks): the honest mean with random signs.
"""

__version__ = "0.1.0"
