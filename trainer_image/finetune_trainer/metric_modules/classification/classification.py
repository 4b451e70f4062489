"""Accuracy, F1, precision and recall for sequence classification, as an `evaluate` module.

Shipped with the trainer so that evaluation works without the Hugging Face Hub
(evaluate.load("accuracy") fetches its script from the Hub). Two classes are
scored as a binary task (positive class 1), more classes with macro averages.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

_DESCRIPTION = "Accuracy, F1, precision and recall of predicted class ids."
_INPUTS = """
predictions: predicted class ids; references: true class ids;
num_labels: number of classes (2 scores the positive class, more use macro averages).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels=2):
        average = "binary" if num_labels == 2 else "macro"
        precision, recall, f1, _ = precision_recall_fscore_support(
            references,
            predictions,
            average=average,
            zero_division=0,
            labels=list(range(num_labels)) if average == "macro" else None,
        )
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "f1": float(f1),
            "precision": float(precision),
            "recall": float(recall),
        }
