"""`fmpipe view` and `fmpipe top`: draw any map of any image from the file on request, and the
images that drive a channel most (dataset examples). No torch.

    from pipeline.viewer import ViewConfig, serve, TopConfig, top
    serve(ViewConfig("out.h5"))                               # blocks; prints the URL
    print(top(TopConfig("out.h5", stage=2, channel=7)).to_json())
"""

from .server import ViewConfig, Viewer, serve
from .top import TopConfig, TopResult, top

__all__ = ["TopConfig", "TopResult", "ViewConfig", "Viewer", "serve", "top"]
