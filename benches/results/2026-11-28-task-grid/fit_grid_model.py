import collections, math, itertools, os
d=collections.defaultdict(dict)
# Scores task-grid models (the model alone, without the driver's first
# choice) against the fixed-grid sweep of emr16_run6.sh. Run: python3 fit_grid_model.py
for l in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'emr16_run6_grid_16t.txt')):
    p=l.split()
    if p and p[0].startswith('amx'):
        g=p[1].split(':')[4] if p[1].count(':')>=4 else 'auto'
        m,n=int(p[4]),int(p[5]); k=(p[0],m,n,int(p[6]))
        d[k][g]=max(d[k].get(g,0),float(p[8]))
def eff(g,mb,nb):
    p,r=map(int,g.split('x')); p=min(p,mb,8); r=min(r,nb); return (p,r)
def makespan(t,mb,p,nb,r,gamma,share):
    runs=lambda P,R:[(P//R,R),(1 if P%R else 0,P%R)]
    kinds=[(ma*nr, pa*rb+gamma*(pa+rb)) for ma,pa in runs(mb,p) for nr,rb in runs(nb,r) if ma*nr>0]
    kinds.sort(key=lambda x:-x[1])
    strag=kinds[0][1] if t>1 else 0
    at=0; tot=0
    for c,cost in kinds:
        first=-(-at//t)*t; end=at+c
        if end>first: tot+= -(-(end-first)//t)*cost
        at=end
    return tot*share+strag
def choose(mb,nb,t,gamma,share,cands):
    best=None
    for (p,r) in cands:
        c=makespan(t,mb,p,nb,r,gamma,share); loads=-(-mb//p)*nb+(-(-nb//r))*mb
        if best is None or (c,loads)<best[:2]: best=(c,loads,(p,r))
    return best[2]
def old(mb,nb,t,ma=8):
    p=min(ma,mb); mc=-(-mb//p); nr=min(max(-(-2*t//mc),1),nb); pr=-(-nb//nr); return (p,pr)
# Per measured case: its panel counts and the best GFLOP/s of each distinct
# (clamped) grid measured, and the case's best.
cases=[]
for k,v in d.items():
    mb=-(-k[1]//32); nb=-(-k[2]//32)
    perf={}
    for g,x in v.items():
        if g=='auto': continue
        e=eff(g,mb,nb); perf[e]=max(perf.get(e,0),x)
    cases.append((k,mb,nb,perf,max(perf.values())))
res={}
for gamma in [0,0.5,1,2,4]:
  for share in [1,2,3,4,8,16,1000]:
    logs=[]; 
    for k,mb,nb,perf,top in cases:
        ch=choose(mb,nb,16,gamma,share,list(perf))
        logs.append(math.log(perf[ch]/top))
    res[(gamma,share)]=math.exp(sum(logs)/len(logs))
for k,v in sorted(res.items(),key=lambda t:-t[1])[:12]: print(k,round(v,3))
# old rule score where its grid measured
logs=[];miss=[]
for k,mb,nb,perf,top in cases:
    o=old(mb,nb,16)
    if o in perf: logs.append(math.log(perf[o]/top))
    else: miss.append((k,o))
print('old rule geomean over measured', round(math.exp(sum(logs)/len(logs)),3), 'n', len(logs), 'missing', miss)
for gamma,share in [(1,8),(1,2)]:
    print(gamma,share,[ (k[1],k[2],choose(-(-k[1]//32),-(-k[2]//32),16,gamma,share,[(p,r) for p in range(1,9) for r in range(1,97)])) for k in list(d)[::2]])
print('--- full candidate set (as the Rust chooser)')
def cands(mb,nb,t,most_a=8):
    most_a=min(most_a,mb)
    def runs(P,fewest):
        most=min(fewest+4*t,P); return sorted(set(-(-P//n) for n in range(fewest,most+1)))
    return [(p,r) for p in runs(mb,-(-mb//most_a)) for r in runs(nb,1)]
out=[]
for gamma in [0.5,1,2]:
  for share in [2,3,4,8]:
    logs=[];miss=0;picks=[]
    for k,mb,nb,perf,top in cases:
        ch=choose(mb,nb,16,gamma,share,cands(mb,nb,16))
        picks.append(ch)
        if ch in perf: logs.append(math.log(perf[ch]/top))
        else: miss+=1
    out.append((math.exp(sum(logs)/max(1,len(logs))),gamma,share,miss,picks[::2]))
for o in sorted(out,reverse=True): print(round(o[0],3),o[1:])
