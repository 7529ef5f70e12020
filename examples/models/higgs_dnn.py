"""A user-defined network for `[train.keras] model = "examples/models/higgs_dnn.py:build_model"`.

hepdask calls ``build_model(n_features)`` and trains the compiled model it returns on
batches streamed from the cluster. Weighted metrics use the event weights from the config.
"""

import keras


def build_model(n_features: int) -> keras.Model:
    inputs = keras.Input((n_features,))
    x = inputs
    for units in (256, 128, 64):
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        weighted_metrics=[keras.metrics.AUC(name="auc")],
    )
    return model
