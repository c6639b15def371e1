"""knn: k-NN calibrated classifiers and k-NN link prediction.

Not implemented yet: this package only reserves the import name (see the project issues).
"""
