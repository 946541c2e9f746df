"""The claims of the two seed documents and the criteria that decide them, fixed before any run.

Each claim quotes the document (Hindi, as written) with an English translation, and states the
criterion — the measured result that would count as *supported*, *mixed* or *not supported* —
in both languages. The experiments implement exactly these criteria; the report prints them
beside the measured numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from sharenorm.lab.spec import Text

__all__ = ["Claim", "CLAIMS", "DOC_TABLES", "QUOTES", "NOT_MEASURED"]

NORM_DOC = "002_55d750c0bea196b9.txt (Batch/Instance/Group Normalization)"
SHARE_DOC = "000_78c0d9a83b2a75cc.txt (Parameter Sharing and Tying)"


@dataclass(frozen=True)
class Claim:
    id: str
    doc: str
    statement_hi: str  # the document's words (short label; a table row in its own words)
    statement_en: str  # translation
    criterion: Text

    @property
    def quote(self) -> tuple[str, ...]:
        """The document's sentences or table rows, verbatim, that the claim stands for (what
        the report quotes under "What the document says")."""
        return QUOTES.get(self.id, (self.statement_hi,))


def _c(id, doc, hi, en, crit_en, crit_hi):
    return Claim(id, doc, hi, en, Text(crit_en, crit_hi))


CLAIMS: dict[str, Claim] = {c.id: c for c in [
    _c("N1", NORM_DOC, "Training को तेज़ करता है।", "BN makes training faster.",
       "Supported if BN reaches the target test accuracy in ≤ 2/3 of the steps no-norm needs "
       "(mean over seeds, a run that never reaches it counts as the step budget) and the 95% "
       "intervals do not overlap; mixed if BN is faster in steps but not by that margin or "
       "not in seconds; not supported otherwise.",
       "Supported अगर BN target test accuracy तक no-norm के ≤ 2/3 steps में पहुँचे (seeds का "
       "mean; जो run नहीं पहुँचे वह पूरा step budget गिना जाए) और 95% intervals overlap न करें; "
       "mixed अगर BN steps में तेज़ हो पर इतना नहीं, या seconds में नहीं; वरना not supported।"),
    _c("N2", NORM_DOC, "Gradient Descent को Stable करता है।", "BN stabilises gradient descent.",
       "Learning rates on a ×3 grid; a learning rate is stable when every seed trains without "
       "diverging and reaches ≥ 50% test accuracy; a stable range runs from the smallest to the "
       "largest stable learning rate, its width counted in grid steps. Supported if BN's stable "
       "range is at least one grid step (×3) wider than no-norm's and contains it; mixed if "
       "wider but not containing it, or equal; not supported if narrower, or if BN has no "
       "stable learning rate at all.",
       "×3 grid पर learning rates; एक learning rate stable है जब हर seed बिना diverge हुए ≥ 50% "
       "test accuracy तक पहुँचे; stable range सबसे छोटी से सबसे बड़ी stable learning rate तक है, "
       "उसकी चौड़ाई grid steps में। Supported अगर BN की stable range no-norm की range को शामिल करे "
       "और कम से कम एक grid step (×3) चौड़ी हो; mixed अगर चौड़ी हो पर शामिल न करे, या बराबर हो; "
       "संकरी हो, या BN की कोई stable learning rate न हो, तो not supported।"),
    _c("N3", NORM_DOC, "Vanishing Gradient Problem को कम करता है।",
       "BN reduces the vanishing-gradient problem.",
       "In a 20-layer sigmoid MLP at initialisation: supported if the first/last layer "
       "gradient-norm ratio is < 0.01 without a norm (gradients vanish) and ≥ 10× larger with "
       "BN, in every seed; mixed if only the 10× holds; not supported otherwise.",
       "20-layer sigmoid MLP में initialisation पर: supported अगर first/last layer gradient-norm "
       "ratio बिना norm के < 0.01 हो (gradients vanish) और BN के साथ ≥ 10× बड़ा हो, हर seed में; "
       "mixed अगर केवल 10× वाली शर्त पूरी हो; वरना not supported।"),
    _c("N4", NORM_DOC, "Model को बेहतर Generalization करने में मदद करता है।",
       "BN helps the model generalize better.",
       "Supported if BN's test accuracy exceeds no-norm's by ≥ 1 point with non-overlapping 95% "
       "intervals and its train–test gap is not larger; mixed if only one of the two holds; "
       "not supported otherwise.",
       "Supported अगर BN की test accuracy no-norm से ≥ 1 point ज़्यादा हो, 95% intervals overlap न "
       "करें और train–test gap बड़ा न हो; mixed अगर इनमें से एक ही शर्त पूरी हो; वरना not supported।"),
    _c("N5", NORM_DOC, "Batch Size पर निर्भरता: BN Yes, IN No, GN No",
       "Dependence on the batch: BN yes, IN no, GN no.",
       "In training mode, change of one sample's output when the other samples of its batch are "
       "replaced (max |Δ| relative to max |y|): supported if BN's is > 1e-3 and IN's, GN's and "
       "LN's are ≤ 1e-6 in every seed; not supported otherwise. The row \"Normalization किस पर "
       "लागू होता है?\": one element of the norm layer's input is changed; a cell is supported if "
       "what changes with it is what the cell names, in every seed: other samples for Batch; "
       "nothing else for Single Instance; exactly the other channels of its group for Group of "
       "Channels.",
       "Training mode में, batch के बाकी samples बदलने पर एक sample के output का बदलाव (max |Δ| / "
       "max |y|): supported अगर BN का > 1e-3 और IN, GN, LN का हर seed में ≤ 1e-6 हो; वरना not "
       "supported।"),
    _c("N6", NORM_DOC, "Small Batch Sizes पर कार्यक्षमता: BN कम, IN उच्च, GN उच्च",
       "Performance at small batch sizes: BN low, IN high, GN high.",
       "Same epochs at every batch size, linearly scaled learning rate. Supported if (a) BN loses "
       "≥ 5 points of test accuracy from batch 32 to batch 2 and (b) GN at batch 2 beats BN at "
       "batch 2 by ≥ 5 points with non-overlapping 95% intervals; mixed if one of (a), (b) "
       "holds; not supported if neither. IN and GN \"stay high\" (the table's cells) if they lose "
       "≤ 2 points from 32 to 2 and reach ≥ 50% test accuracy at batch 2 (5× chance on mnist1d's "
       "10 classes: a norm that learned nothing at either size must not count as high).",
       "हर batch size पर उतने ही epochs, learning rate linearly scaled। Supported अगर (a) BN की test "
       "accuracy batch 32 से batch 2 तक ≥ 5 points गिरे और (b) batch 2 पर GN, BN से ≥ 5 points आगे "
       "हो और 95% intervals overlap न करें; mixed अगर (a), (b) में से एक हो; दोनों न हों तो not "
       "supported। IN और GN \"high रहते हैं\" (table के cells) अगर 32 से 2 तक ≤ 2 points गिरें और "
       "batch 2 पर ≥ 50% test accuracy हो (mnist1d की 10 classes पर chance का 5×: जो norm किसी भी "
       "size पर कुछ न सीखे वह high नहीं गिना जाए)।"),
    _c("N7", NORM_DOC, "Style Transfer में उपयोगी होता है। (Style Transfer में उपयोग: BN No, IN Yes, GN No)",
       "IN is useful for style transfer (used for style transfer: BN no, IN yes, GN no).",
       "Supported if (a) IN features change by ≤ 1e-2 (relative; ε = 1e-5 leaves a residual) when an image's contrast is "
       "doubled and its brightness shifted, while features without a norm change by ≥ 0.1, in "
       "every seed, and (b) after the AdaIN statistics swap the output's feature statistics are "
       "closer to the style image's than to the content image's; mixed if one holds.",
       "Supported अगर (a) image का contrast दोगुना और brightness shift करने पर IN features ≤ 1e-2 "
       "(relative; ε = 1e-5 से थोड़ा residual) बदलें, जबकि बिना norm के features ≥ 0.1 बदलें, हर seed में, और (b) AdaIN "
       "statistics swap के बाद output की feature statistics style image के ज़्यादा करीब हों content "
       "image की तुलना में; एक ही शर्त पूरी हो तो mixed।"),
    _c("N8", NORM_DOC, "Deep Neural Networks के लिए अधिक स्थिर। (GN)",
       "GN is more stable for deep neural networks.",
       "Depth sweep at batch 4. Supported if at the largest depth GN's test accuracy beats BN's "
       "by ≥ 2 points with non-overlapping 95% intervals and GN loses less accuracy than BN from "
       "the smallest to the largest depth; mixed if one holds; not supported if neither.",
       "Batch 4 पर depth sweep। Supported अगर सबसे बड़ी depth पर GN की test accuracy BN से ≥ 2 "
       "points ज़्यादा हो (95% intervals overlap न करें) और सबसे छोटी से सबसे बड़ी depth तक GN की "
       "accuracy BN से कम गिरे; एक शर्त हो तो mixed; कोई नहीं तो not supported।"),
    _c("S1", SHARE_DOC, "Model की Complexity कम होती है। / Memory Efficient होता है।",
       "Sharing reduces model complexity and is memory efficient.",
       "Supported if the CNN has ≥ 5× fewer parameters and parameter+Adam-state bytes than "
       "the same network with locally connected layers (and than the MLP); mixed if ≥ 1.5×; "
       "not supported otherwise.",
       "Supported अगर CNN के parameters और parameter+Adam-state bytes, locally connected layers "
       "वाले उसी network (और MLP) से ≥ 5× कम हों; ≥ 1.5× हो तो mixed; वरना not supported।"),
    _c("S2", SHARE_DOC, "Training Faster होती है।", "Sharing makes training faster.",
       "Supported if the CNN reaches the target test accuracy in fewer seconds than both the "
       "locally connected network and the MLP (those that never reach it count as not faster) "
       "and its time per epoch is lower than the locally connected network's; mixed if it "
       "wins some of these; not supported if none.",
       "Supported अगर CNN target test accuracy तक locally connected network और MLP दोनों से कम "
       "seconds में पहुँचे (जो नहीं पहुँचे वह तेज़ नहीं गिना जाए) और उसका time per epoch locally "
       "connected network से कम हो; कुछ शर्तें पूरी हों तो mixed; कोई नहीं तो not supported।"),
    _c("S3", SHARE_DOC, "Generalization क्षमता बढ़ती है। / Overfitting को कम करता है",
       "Sharing improves generalization / reduces overfitting.",
       "Supported if on mnist1d the CNN's test accuracy beats the locally connected network's "
       "and the MLP's by ≥ 3 points with non-overlapping 95% intervals, and on the spatially "
       "shuffled mnist1d the CNN's lead over the MLP shrinks (its advantage comes from "
       "translation structure); mixed if only the first part holds; not supported otherwise.",
       "Supported अगर mnist1d पर CNN की test accuracy locally connected network और MLP से ≥ 3 points "
       "ज़्यादा हो (95% intervals overlap न करें), और spatially shuffled mnist1d पर CNN की MLP पर "
       "बढ़त घटे (फ़ायदा translation structure से आता है); केवल पहला भाग हो तो mixed; वरना not "
       "supported।"),
    _c("S4", SHARE_DOC, "ये तकनीकें विशेष रूप से Convolutional Neural Networks (CNNs) और Recurrent "
       "Neural Networks (RNNs) में उपयोग की जाती हैं।",
       "Sharing is used in CNNs and RNNs (read as: an RNN's weights shared across time steps).",
       "Supported if the RNN with weights shared across time has ≥ 5× fewer parameters than "
       "the one with separate weights per step and a test accuracy at least as high (mean "
       "higher, or the 95% intervals overlap); mixed if only the parameter part holds.",
       "Supported अगर time पर shared weights वाले RNN के parameters हर step के अलग weights वाले "
       "से ≥ 5× कम हों और test accuracy कम से कम उतनी हो (mean ज़्यादा, या 95% intervals overlap "
       "करें); केवल parameters वाली शर्त हो तो mixed।"),
    _c("T1", SHARE_DOC, "Model के Parameters कम हो जाते हैं। / Memory Usage कम होती है।",
       "Tying reduces the parameters and memory usage.",
       "Supported if the tied autoencoder has ≤ 0.55× the parameters and parameter+Adam bytes "
       "of the untied one (weights halve, biases stay); mixed if < 1×; not supported otherwise.",
       "Supported अगर tied autoencoder के parameters और parameter+Adam bytes untied के ≤ 0.55× हों "
       "(weights आधे, biases वही); < 1× हो तो mixed; वरना not supported।"),
    _c("T2", SHARE_DOC, "Regularization और Overfitting को कम करता है।",
       "Tying regularizes and reduces overfitting.",
       "Autoencoders on small training sets. Supported if at the smallest training set the tied "
       "model's test reconstruction error is lower than the untied one's with non-overlapping "
       "95% intervals and its train–test gap is smaller; mixed if one holds. Soft tying "
       "interpolates if the distance ‖W_dec − W_encᵀ‖ falls monotonically with the strength "
       "and the strongest setting's test error is closer to tied than to untied. The table cells "
       "\"Model की Symmetry को बनाए रखता है\" and \"Weights को समान मान रखने के लिए बाध्य करना\" are "
       "judged by symmetry itself: supported if after training ‖W_dec − W_encᵀ‖ is exactly 0 for "
       "the tied model in every seed and > 0 for the untied one.",
       "छोटे training sets पर autoencoders। Supported अगर सबसे छोटे training set पर tied model की "
       "test reconstruction error untied से कम हो (95% intervals overlap न करें) और train–test gap "
       "छोटा हो; एक शर्त हो तो mixed। Soft tying interpolate करता है अगर ‖W_dec − W_encᵀ‖ strength "
       "के साथ लगातार घटे और सबसे strong setting की test error untied की तुलना में tied के ज़्यादा करीब हो। "
       "Table cells \"Model की Symmetry को बनाए रखता है\" और \"Weights को समान मान रखने के लिए बाध्य "
       "करना\" symmetry से ही जाँचे जाते हैं: supported अगर training के बाद tied model का ‖W_dec − "
       "W_encᵀ‖ हर seed में ठीक 0 हो और untied का > 0।"),
    _c("T3", SHARE_DOC, "Memory Utilization: Parameter Sharing — High Efficiency, Parameter Tying "
       "— Medium Efficiency", "Memory utilization: sharing high efficiency, tying medium.",
       "Supported if the measured parameter+Adam memory reduction factor of sharing (locally "
       "connected → CNN) is larger than that of tying (untied → tied autoencoder); not "
       "supported otherwise.",
       "Supported अगर sharing (locally connected → CNN) का measured parameter+Adam memory reduction "
       "factor, tying (untied → tied autoencoder) के factor से बड़ा हो; वरना not supported।"),
]}

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
    (NORM_DOC, "Deep Learning Model में उपयोग | CNNs, RNNs | Style Transfer | Small Batch Size "
     "Training", "BN is used in CNNs and RNNs.",
     Text("\"Used in\" describes practice, not an effect, so no criterion judges it: the "
          "table's cell shows N1's test accuracy of BN in a CNN, without a verdict. The RNN half "
          "is not measured: no experiment trains an RNN with BN.",
          "\"उपयोग\" practice बताता है, कोई effect नहीं, इसलिए कोई criterion इसे नहीं जाँचती: table "
          "का cell CNN में BN की N1 test accuracy दिखाता है, बिना verdict के। RNN वाला हिस्सा "
          "measure नहीं हुआ: कोई experiment BN के साथ RNN train नहीं करता।")),
    (SHARE_DOC, "Parameter Sharing: जब Model को Large Scale पर Train करना हो, जैसे CNN और RNNs।",
     "Use sharing when a model is trained at large scale.",
     Text("The lab trains small models on a CPU; large-scale training is out of its reach.",
          "Lab CPU पर छोटे models train करता है; large scale training उसकी पहुँच से बाहर है।")),
]

# The comparison tables at the end of the two documents: (table id, title, columns, rows);
# each row is (row id, the document's row label, the document's cells, the claim backing the
# row or one claim per column).
DOC_TABLES = [
    ("norm", Text("Batch vs Instance vs Group Normalization (document 002, section 5)",
                  "Batch vs Instance vs Group Normalization की तुलना (document 002, section 5)"),
     ["batch", "instance", "group"],
     [("applies", "Normalization किस पर लागू होता है?", ["Batch", "Single Instance",
                                                          "Group of Channels"], "N5"),
      ("depend", "Batch Size पर निर्भरता", ["Yes", "No", "No"], "N5"),
      ("style", "Style Transfer में उपयोग", ["No", "Yes", "No"], "N7"),
      ("small", "Small Batch Sizes पर कार्यक्षमता", ["कम", "उच्च", "उच्च"], "N6"),
      ("use", "Deep Learning Model में उपयोग", ["CNNs, RNNs", "Style Transfer",
                                               "Small Batch Size Training"], ["N1", "N7", "N6"])]),
    ("share", Text("Parameter Sharing vs Parameter Tying (document 000, section 3)",
                   "Parameter Sharing vs Parameter Tying की तुलना (document 000, section 3)"),
     ["sharing", "tying"],
     [("purpose", "उद्देश्य", ["Weights को Multiple Locations पर साझा करना",
                            "Weights को समान मान रखने के लिए बाध्य करना"], ["S1", "T2"]),
      ("example", "उदाहरण", ["CNN में Filters", "Autoencoders में Symmetric Weights"], "S1"),
      ("memory", "Memory Utilization", ["High Efficiency", "Medium Efficiency"], "T3"),
      ("reg", "Regularization Effect", ["Overfitting को कम करता है",
                                        "Model की Symmetry को बनाए रखता है"], ["S3", "T2"])]),
]
