"""Study: oneDNN's batch norm (with the ReLU fused or not) alone against JAX's written-out form, on the
model's four shapes at batch 128: ms per pass and errors against NumPy. Run from a checkout::

    python -m benchmarks.onednn_batch_norm_alone
"""
import ctypes, time, statistics, numpy as np
from mnist_multibackend import jax_onednn as j
lib, engine, stream = j._onednn()
lib.dnnl_batch_normalization_forward_primitive_desc_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_uint, ctypes.c_void_p]
lib.dnnl_batch_normalization_backward_primitive_desc_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
def md_nhwc(n,h,w,c):
    md = ctypes.c_void_p(); assert not lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), 4, j._Dims(n,c,h,w), j._F32, j._Dims(h*w*c,1,w*c,c)); return md
def md1(c):
    md = ctypes.c_void_p(); assert not lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), 1, j._Dims(c), j._F32, j._Dims(1)); return md
def mem(md, arr):
    m = ctypes.c_void_p(); assert not lib.dnnl_memory_create(ctypes.byref(m), md, engine, ctypes.c_void_p(arr.ctypes.data)); return m
def alloc_like(pd, q):
    md = ctypes.c_void_p(lib.dnnl_primitive_desc_query_md(pd, q, 0))
    m = ctypes.c_void_p(); assert not lib.dnnl_memory_create(ctypes.byref(m), md, engine, j._ALLOCATE); return m
def info(pd):
    s = ctypes.c_char_p(); lib.dnnl_primitive_desc_query(pd, 8, 0, ctypes.byref(s)); return s.value.decode()
def prim(pd):
    p = ctypes.c_void_p(); assert not lib.dnnl_primitive_create(ctypes.byref(p), pd); return p
def run(p, args):
    arr = (j._ExecArg*len(args))(*[j._ExecArg(a, m) for a, m in args])
    assert not lib.dnnl_primitive_execute(p, stream, len(args), arr); lib.dnnl_stream_wait(stream)
def timeit(f, n=21):
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(1e3*(time.perf_counter()-t))
    return statistics.median(ts)
def bench(shape, relu):
    n,h,w,c = shape; eps=1e-3
    flags = 0x2|0x4|(0x8 if relu else 0)
    rng=np.random.default_rng(0)
    x=rng.standard_normal(shape, dtype=np.float32); y=np.empty_like(x); g=rng.standard_normal(shape, dtype=np.float32); dx=np.empty_like(x)
    gamma=np.ones(c,np.float32)*1.3; beta=np.full(c,0.2,np.float32); mean=np.empty(c,np.float32); var=np.empty(c,np.float32); dgamma=np.empty(c,np.float32); dbeta=np.empty(c,np.float32)
    md=md_nhwc(*shape); mc=md1(c)
    attr=ctypes.c_void_p(); lib.dnnl_primitive_attr_create(ctypes.byref(attr)); lib.dnnl_primitive_attr_set_scratchpad_mode(attr, 1)
    fpd=ctypes.c_void_p(); st=lib.dnnl_batch_normalization_forward_primitive_desc_create(ctypes.byref(fpd), engine, 64, md, md, eps, flags, attr); assert not st, st
    bpd=ctypes.c_void_p(); st=lib.dnnl_batch_normalization_backward_primitive_desc_create(ctypes.byref(bpd), engine, 128, md, md, md, eps, flags, fpd, attr); assert not st, st
    fp, bp = prim(fpd), prim(bpd)
    ws = alloc_like(fpd, 135) if relu else None
    fargs=[(1,mem(md,x)),(17,mem(md,y)),(49,mem(mc,mean)),(50,mem(mc,var)),(51,mem(mc,gamma)),(52,mem(mc,beta)),(80,alloc_like(fpd,136))]+([(64,ws)] if relu else [])
    bargs=[(1,mem(md,x)),(145,mem(md,g)),(49,mem(mc,mean)),(50,mem(mc,var)),(51,mem(mc,gamma)),(129,mem(md,dx)),(255,mem(mc,dgamma)),(256,mem(mc,dbeta)),(80,alloc_like(bpd,136))]+([(64,ws)] if relu else [])
    run(fp,fargs); run(bp,bargs)
    # check vs numpy
    m=x.mean((0,1,2)); v=x.var((0,1,2)); xh=(x-m)/np.sqrt(v+eps); yy=xh*gamma+beta
    if relu: yy=np.maximum(yy,0)
    gg = g*(yy>0) if relu else g
    db=gg.sum((0,1,2)); dg=(gg*xh).sum((0,1,2)); N=n*h*w
    dxx=gamma/np.sqrt(v+eps)*(gg-(db+xh*dg)/N)
    print(shape,'relu',relu,info(fpd),info(bpd),'err y',np.abs(y-yy).max(),'mean',np.abs(mean-m).max(),'var',np.abs(var-v).max(),'dx',np.abs(dx-dxx).max()/np.abs(dxx).max(),'dg',np.abs(dgamma-dg).max()/np.abs(dg).max())
    tf_=timeit(lambda: run(fp,fargs)); tb=timeit(lambda: run(bp,bargs))
    print(f'  oneDNN fwd {tf_:.2f} ms bwd {tb:.2f} ms')
    # XLA
    import jax, jax.numpy as jnp
    from mnist_multibackend.jax_cpu import batch_norm_training
    def f(x,gm,bt):
        o,_,_=batch_norm_training(x,gm,bt,eps)
        return jnp.maximum(o,0) if relu else o
    fw=jax.jit(f); X,G,B,GG=map(jnp.asarray,(x,gamma,beta,g))
    def fb(x,gm,bt,g):
        o,vjp=jax.vjp(f,x,gm,bt); return o, vjp(g)
    fbj=jax.jit(fb)
    fw(X,G,B).block_until_ready(); jax.block_until_ready(fbj(X,G,B,GG))
    t1=timeit(lambda: fw(X,G,B).block_until_ready()); t2=timeit(lambda: jax.block_until_ready(fbj(X,G,B,GG)))
    print(f'  XLA fwd {t1:.2f} ms fwd+bwd {t2:.2f} ms ; oneDNN fwd+bwd {tf_+tb:.2f}')
from mnist_multibackend.runtime import start
start("jax","cpu")
for shp in [(128,26,26,32),(128,24,24,32),(128,10,10,64),(128,8,8,64)]:
    for relu in (False, True):
        bench(shp, relu)
