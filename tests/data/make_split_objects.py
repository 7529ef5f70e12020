"""Write split_objects.root: a TTree of split objects, whose values are in sub-branches.

uproot cannot write such a tree (it writes records as flat ``Info_pfMET`` branches), so this
file was made once with ROOT (``pip install root``, ROOT 6.40) and is kept beside this script:
``python tests/data/make_split_objects.py`` (from a scratch directory: ROOT leaves its
``AutoDict_*`` files in the current one). Its tree ``events`` has a struct branch ``Info``
(sub-branches ``Info/pfMET``, ``Info/evtNum``), a ``std::vector<Lep>`` branch ``Lep``
(sub-branches ``Lep/Lep.pt``, ``Lep/Lep.eta``: one value per lepton) and a plain ``mass`` that follows ``pfMET``.
"""

import array
import random
from pathlib import Path

import ROOT

ROOT.gInterpreter.Declare("struct EventInfo { float pfMET; int evtNum; };"
                          "struct Lep { float pt; float eta; };")
ROOT.gInterpreter.GenerateDictionary("vector<Lep>", "vector")

random.seed(1)
out = ROOT.TFile(str(Path(__file__).with_name("split_objects.root")), "RECREATE")
tree = ROOT.TTree("events", "split objects")
info, leps, mass = ROOT.EventInfo(), ROOT.std.vector["Lep"](), array.array("f", [0.0])
tree.Branch("Info", info, 32000, 99)
tree.Branch("Lep", leps, 32000, 99)
tree.Branch("mass", mass, "mass/F")
for entry in range(300):
    # mass follows pfMET, so that a label on mass can be learned from the split objects
    info.pfMET, info.evtNum = random.expovariate(1 / 30), entry
    mass[0] = 80 + info.pfMET + random.gauss(0, 10)
    leps.clear()
    for _ in range(random.randint(0, 3)):
        lep = ROOT.Lep()
        lep.pt, lep.eta = 10 + random.expovariate(1 / 20), random.uniform(-2.5, 2.5)
        leps.push_back(lep)
    tree.Fill()
tree.Write()
out.Close()
