"""Test and benchmark models (random weights, nothing downloaded): not part of the installed stage.

zoo.py: one small model per Keras layer family plus keras.applications builders; custom_layers.py: the custom
objects some of them need; user_models.py: the models users really bring, each with the outcome the stage must reach.
"""
