import time, statistics
from explorer.config import ExplorerConfig
from explorer.service import Explorer
e=Explorer(ExplorerConfig()); e.backend()
img="assets/chelsea.jpg"
_, st = e.explore(img, "What?", e.settings({"method":"tome"}), {})
for method, name, vals in (("tome","budget",[20,100,300,500]),("tome","rounds",[1,8,32,64]),("prumerge","iqr_multiplier",[0.5,3.0]),("visionzip","budget",[20,300])):
    for v in vals:
        ts=[]
        for _ in range(5):
            s=e.settings({"method":method,name:v})
            e._reductions.clear()
            t=time.perf_counter(); out,_=e.explore(img,"What?",s,st); ts.append(time.perf_counter()-t)
        print(method,name,v, round(1000*statistics.median(ts),1), out.reduction.n_kept)
import cProfile, pstats
s=e.settings({"method":"tome","budget":300})
pr=cProfile.Profile(); pr.enable()
for _ in range(5):
    e._reductions.clear(); e.explore(img,"What?",s,st)
pr.disable(); pstats.Stats(pr).sort_stats("cumulative").print_stats(18)
