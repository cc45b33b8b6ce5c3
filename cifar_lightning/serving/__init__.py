"""The serving job behind serve.py: a train.py checkpoint behind an HTTP API, with LitServe.

    POST /predict            an image (multipart form field `file`, or the raw file as the body) -> JSON: top-k
                             classes, the OOD verdict when a detector is loaded, and `batch_size`: how many requests
                             ran in the same forward pass as this one (1 up to max_batch_size), to tune
                             max_batch_size and batch_timeout for the traffic
    POST /predict?gradcam=1  the same, plus the Grad-CAM overlay of the top class as a base64 PNG
    GET  /                   a self-contained web page (cifar_lightning/web/index.html) for trying it
    GET  /info, /health      LitServe's: the model and server settings; 200 once the workers are ready

How a request travels: LitServe runs the model in worker processes fed by a queue, gathering up to
max_batch_size requests (waiting at most batch_timeout seconds) into one forward pass. LitServe 0.2.19 decodes
a batch's requests in one try block, so one bad upload would fail the whole batch: uploads are checked and
decoded before the queue, in the HTTP server process (upload_guard.py), and only a valid 32 x 32 image reaches
a worker (app.py).
"""
