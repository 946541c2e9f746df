"""What the two seed documents say, beside the claims the experiments define.

Each experiment defines its own claims (:class:`~sharenorm.lab.spec.Claim`: the document's
words, a translation, and the criterion formatted from the experiment's constants). This module
holds what belongs to the documents rather than to one experiment: their names, the verbatim
quotes behind the claims, their comparison tables, and the claims no experiment measures.
"""

from __future__ import annotations

from sharenorm.lab.spec import Claim, Text

__all__ = ["Claim", "DOC_TABLES", "QUOTES", "NOT_MEASURED", "NORM_DOC", "SHARE_DOC", "quote"]

# The two documents, named by their titles
NORM_DOC = ("“Batch Normalization, Instance Normalization और Group Normalization क्या हैं?” "
            "(Normalization in Deep Learning)")
SHARE_DOC = ("“Parameter Sharing और Parameter Tying क्या है?” (Parameter Sharing and Tying in "
             "Deep Learning)")


# The document's own words behind each claim, verbatim (sentences, or table rows as written),
# quoted by the report; tests check each against the seed texts.
QUOTES: dict[str, tuple[str, ...]] = {
    "N5": ("Batch Size पर निर्भरता | Yes | No | No", "Batch Size पर निर्भर नहीं करता।"),
    "N6": ("Small Batch Sizes पर कार्यक्षमता | कम | उच्च | उच्च",
           "Small Batch Size के लिए बेहतर कार्य करता है।"),
    "N7": ("Style Transfer में उपयोगी होता है।", "Style Transfer में उपयोग | No | Yes | No"),
    "N8": ("Deep Neural Networks के लिए अधिक स्थिर।",),
    "S1": ("Model की Complexity कम होती है।", "Memory Efficient होता है।"),
    "S3": ("Generalization क्षमता बढ़ती है।",
           "Regularization Effect | Overfitting को कम करता है | Model की Symmetry को बनाए रखता है"),
    "S4": ("ये तकनीकें विशेष रूप से Convolutional Neural Networks (CNNs) और Recurrent Neural "
           "Networks (RNNs) में उपयोग की जाती हैं।",
           "CNNs, RNNs और Autoencoders जैसे Models में इनका व्यापक उपयोग किया जाता है।"),
    "T1": ("Model के Parameters कम हो जाते हैं।", "Memory Usage कम होती है।"),
    "T3": ("Memory Utilization | High Efficiency | Medium Efficiency",),
    "N10": ("Deep Learning Model में उपयोग | CNNs, RNNs | Style Transfer | Small Batch Size "
            "Training",),
}

# Claims of the documents that no experiment measures, with the reason: the report lists them
# so that silence is never read as support. (doc, the document's words, English, reason)
NOT_MEASURED = [
    (NORM_DOC, "Feature-wise Normalization करता है।", "IN normalizes feature-wise.",
     Text("A definition rather than an effect; the N5 scope probe (row \"Normalization किस पर लागू "
          "होता है?\") shows IN's statistics are per sample and per channel.",
          "यह effect नहीं, definition है; N5 का scope probe (row \"Normalization किस पर लागू होता है?\") "
          "दिखाता है कि IN की statistics हर sample और हर channel की अपनी हैं।")),
    (NORM_DOC, "ये सभी Techniques Model की Training को स्थिर बनाने, Convergence को तेज़ करने और "
     "Generalization में सुधार लाने के लिए उपयोग की जाती हैं।",
     "All of them (BN, IN, GN) make training stable, converge faster and generalize better.",
     Text("Only BN has a criterion (N1, N2, N4); the N1/N4 tables show IN, GN and LN beside it "
          "with the same protocol, but no verdict is drawn for them.",
          "केवल BN की criterion है (N1, N2, N4); N1/N4 tables में उसी protocol से IN, GN और LN के "
          "numbers हैं, पर उन पर verdict नहीं दिया गया।")),
    (SHARE_DOC, "Parameter Sharing: जब Model को Large Scale पर Train करना हो, जैसे CNN और RNNs।",
     "Use sharing when a model is trained at large scale.",
     Text("The lab trains small models on a CPU; large-scale training is out of its reach.",
          "Lab CPU पर छोटे models train करता है; large scale training उसकी पहुँच से बाहर है।")),
]

# The comparison tables at the end of the two documents: (table id, title, columns, rows);
# each row is (row id, the document's row label, the document's cells, the claim backing the
# row or one claim per column).
DOC_TABLES = [
    ("norm", Text("Batch vs Instance vs Group Normalization (the normalization document, section 5)",
                  "Batch vs Instance vs Group Normalization की तुलना (normalization वाला document, section 5)"),
     ["batch", "instance", "group"],
     [("applies", "Normalization किस पर लागू होता है?", ["Batch", "Single Instance",
                                                          "Group of Channels"], "N5"),
      ("depend", "Batch Size पर निर्भरता", ["Yes", "No", "No"], "N5"),
      ("style", "Style Transfer में उपयोग", ["No", "Yes", "No"], "N7"),
      ("small", "Small Batch Sizes पर कार्यक्षमता", ["कम", "उच्च", "उच्च"], "N6"),
      ("use", "Deep Learning Model में उपयोग", ["CNNs, RNNs", "Style Transfer",
                                               "Small Batch Size Training"], ["N10", "N7", "N6"])]),
    ("share", Text("Parameter Sharing vs Parameter Tying (the sharing and tying document, section 3)",
                   "Parameter Sharing vs Parameter Tying की तुलना (sharing और tying वाला document, section 3)"),
     ["sharing", "tying"],
     [("purpose", "उद्देश्य", ["Weights को Multiple Locations पर साझा करना",
                            "Weights को समान मान रखने के लिए बाध्य करना"], ["S1", "T2"]),
      ("example", "उदाहरण", ["CNN में Filters", "Autoencoders में Symmetric Weights"], "S1"),
      ("memory", "Memory Utilization", ["High Efficiency", "Medium Efficiency"], "T3"),
      ("reg", "Regularization Effect", ["Overfitting को कम करता है",
                                        "Model की Symmetry को बनाए रखता है"], ["S3", "T2"])]),
]


def quote(claim: Claim) -> tuple[str, ...]:
    """The document's sentences or table rows, verbatim, that ``claim`` stands for (what the
    report quotes under "What the document says"); its short label when none is recorded."""
    return QUOTES.get(claim.id, (claim.statement_hi,))
