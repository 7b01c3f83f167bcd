"""Child process of tests/test_qgis_plugin.py: a fresh QGIS runs sarae:compress as the dialog does (a background
task) on its first Run while a 10 ms timer ticks on the GUI thread; prints the largest gap between ticks."""
import json, os, sys, time
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from qgis.core import QgsApplication
app = QgsApplication([], True); app.initQgis()
sys.path.append(sys.argv[1])
from processing.core.Processing import Processing
Processing.initialize()
from qgis_plugin.provider import SarAeProvider
provider = SarAeProvider(); QgsApplication.processingRegistry().addProvider(provider)
from qgis.core import QgsProcessingAlgRunnerTask, QgsProcessingContext, QgsProcessingFeedback
from qgis.PyQt.QtCore import QEventLoop, QTimer
assert "sar_ae_core.codec" not in sys.modules and "onnxruntime" not in sys.modules  # a first Run
alg = QgsApplication.processingRegistry().createAlgorithmById("sarae:compress")
context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
ticks, done = [], {}
timer = QTimer(); timer.setInterval(10); timer.timeout.connect(lambda: ticks.append(time.perf_counter())); timer.start()
loop = QEventLoop()
task = QgsProcessingAlgRunnerTask(alg, {"INPUT": sys.argv[2], "OUTPUT": sys.argv[3]}, context, feedback)
task.executed.connect(lambda ok, results: (done.update(ok=ok), loop.quit()))
t0 = time.perf_counter()
QgsApplication.taskManager().addTask(task)
QTimer.singleShot(120_000, loop.quit)
loop.exec_()
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
print("RESULT" + json.dumps({"ok": done.get("ok"), "max_gap_s": max(gaps) if gaps else None, "ticks": len(ticks),
                             "seconds": time.perf_counter() - t0}))
os._exit(0)
