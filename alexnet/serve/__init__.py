"""`alexnet serve`: a web page and an HTTP API that classify photos with a trained network.

    alexnet serve --checkpoint runs/x/best.pt                     # http://127.0.0.1:8000/
    alexnet serve --weights torchvision --max-batch 32 --batch-window-ms 5
    alexnet serve --checkpoint best.pt --features train_fc7.npy  # + nearest training images (Fig. 4)

    curl -F file=@photo.jpg 'http://127.0.0.1:8000/v1/predict?topk=5&views=10'

The parts, each read top to bottom:
    server.py    the command: flags, loading the network, binding the socket, uvicorn, shutdown
    app.py       the FastAPI app: routes, reading and checking uploads, JSON errors
    batching.py  the bounded queue and the batcher: one forward pass for requests that arrive together
    figures.py   the conv1 filters (Fig. 3) and the nearest training images of an fc7 file (Fig. 4)
    static/      the page (plain HTML, CSS and JavaScript, served by the app itself: works offline)
"""
